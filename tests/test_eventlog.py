"""Unit tests of flux_delegate.eventlog: what a job's eventlog says."""

from flux_delegate.eventlog import (
    RemoteOutcome,
    delegations,
    describe_remote_exception,
    find_delegation,
    interrupted_submit,
    local_end_reason,
    outstanding_dependencies,
)


def event(name, **context):
    return {"timestamp": 0.0, "name": name, "context": context}


def test_interrupted_submit_is_the_last_attempt_without_an_answer():
    a = {"uri": "local:///a", "verdict": "feasible", "label": "a"}
    b = {"uri": "local:///b", "verdict": "unknown"}
    choice = {
        "timestamp": 10.0,
        "name": "delegate-choice",
        "context": {"candidates": [a, b], "order": ["a", "local:///b"], "choice": "a"},
    }
    assert interrupted_submit([event("submit")]) is None
    log = [event("submit"), choice]
    assert interrupted_submit(log) == {"uri": "local:///a", "label": "a", "timestamp": 10.0}
    log.append(
        {
            "timestamp": 12.0,
            "name": "delegate-failover",
            "context": {"uri": "local:///a", "reason": "r", "next": "local:///b"},
        }
    )
    assert interrupted_submit(log) == {"uri": "local:///b", "label": None, "timestamp": 12.0}
    log.append(event("delegated", jobid=3, uri="local:///b"))
    assert interrupted_submit(log) is None
    # No target chosen (all infeasible): nothing was sent.
    none = {
        "timestamp": 1.0,
        "name": "delegate-choice",
        "context": {"candidates": [a], "order": [], "choice": None},
    }
    assert interrupted_submit([none]) is None


def test_outstanding_dependencies():
    eventlog = [
        event("submit"),
        event("dependency-add", description="after-success=ƒA"),
        event("dependency-add", description="delegated"),
        event("validate"),
    ]
    assert outstanding_dependencies(eventlog) == {"after-success=ƒA", "delegated"}
    eventlog.append(event("dependency-remove", description="after-success=ƒA"))
    assert outstanding_dependencies(eventlog) == {"delegated"}
    eventlog.append(event("dependency-remove", description="delegated"))
    assert outstanding_dependencies(eventlog) == set()


def test_find_delegation():
    assert find_delegation([event("submit")]) is None
    log = [event("submit"), event("delegated", jobid=42, uri="local:///x")]
    assert find_delegation(log) == {"jobid": 42, "uri": "local:///x"}


def test_remote_outcome_first_fatal_exception_wins():
    outcome = RemoteOutcome()
    outcome.update("exception", {"type": "warn", "severity": 3, "note": "x"})
    assert outcome.exception is None
    outcome.update("exception", {"type": "timeout", "severity": 0, "note": "t"})
    outcome.update("exception", {"type": "cancel", "severity": 0, "note": "c"})
    outcome.update("finish", {"status": 15})
    assert outcome.exception["type"] == "timeout"
    assert outcome.wait_status == 15
    assert not outcome.ended
    outcome.update("clean", {})
    assert outcome.ended


def test_remote_outcome_plain_finish():
    outcome = RemoteOutcome()
    for name, ctx in [("alloc", {}), ("start", {}), ("finish", {"status": 768}), ("clean", {})]:
        outcome.update(name, ctx)
    assert outcome.started and outcome.ended
    assert outcome.exception is None and outcome.wait_status == 768


def test_exception_notes_name_the_remote_job_and_uri():
    cancel = describe_remote_exception(
        "ƒR", "local:///t", {"type": "cancel", "severity": 0, "note": "by admin"}
    )
    assert cancel == "remote job ƒR on local:///t was canceled: by admin"
    alloc = describe_remote_exception(
        "ƒR", "local:///t", {"type": "alloc", "severity": 0, "note": ""}
    )
    assert alloc == "remote job ƒR on local:///t failed: alloc exception"


def test_local_end_reason():
    args = {"end_event": {"name": "exception", "context": {"type": "cancel", "note": "bye"}}}
    assert local_end_reason(args, "ƒL") == "cancel in the source instance (job ƒL): bye"
    assert local_end_reason({}, "ƒL") == "job ƒL ended in the source instance"


def test_failover_after_the_last_delegation_means_choose_again():
    log = [
        event("delegated", jobid=1, uri="local:///a"),
        event("delegate-failover", uri="local:///a"),
    ]
    assert find_delegation(log) is None
    log.append(event("delegated", jobid=2, uri="local:///b"))
    assert find_delegation(log) == {"jobid": 2, "uri": "local:///b"}


def test_delegations_lists_every_remote_job():
    log = [
        event("delegated", jobid=1, uri="local:///a"),
        event("delegate-failover", uri="local:///a"),
        event("delegated", jobid=2, uri="local:///b"),
        event("delegated", uri="local:///c"),  # malformed: no jobid
    ]
    assert delegations(log) == [("local:///a", 1), ("local:///b", 2)]
