"""Unit tests of the handler's pure decision logic (no broker needed)."""

import importlib.util
import os

import pytest

HANDLER_PATH = os.environ.get("DELEGATE_HANDLER") or os.path.join(
    os.path.dirname(__file__), "..", "delegate_handler.py"
)


def import_handler():
    spec = importlib.util.spec_from_file_location("delegate_handler", HANDLER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


handler = import_handler()
needs_flux = pytest.mark.skipif(
    handler.flux is None, reason="needs flux-core's Python bindings (flux-core is not installed)"
)


@pytest.mark.parametrize("value", [None, "", "   ", 5])
def test_empty_value_is_rejected(value):
    with pytest.raises(ValueError, match="delegate needs a target"):
        handler.parse_target(value)


@pytest.mark.parametrize("value", ["local:///tmp/a b", "ssh://host/\tx", "a\nb"])
def test_white_space_is_rejected(value):
    with pytest.raises(ValueError, match="not a URI"):
        handler.parse_target(value)


@pytest.mark.parametrize(
    "value, kind, scheme",
    [
        ("local:///tmp/flux-x/local-0", "uri", "local"),
        ("ssh://host/tmp/flux-x/local-0", "uri", "ssh"),
        ("SSH://host/tmp/x", "uri", "ssh"),
        ("foo://bar", "scheme", "foo"),
        ("slurm:1234", "scheme", "slurm"),
        ("jobid:ƒ2222222", "jobid", "jobid"),
    ],
)
def test_target_kinds(value, kind, scheme):
    target = handler.parse_target(value)
    assert (target.kind, target.scheme, target.value) == (kind, scheme, value)


@needs_flux
def test_bare_job_ids():
    target = handler.parse_target("ƒ2222222")
    assert target.kind == "jobid"
    assert [int(j) for j in target.jobids] == [int(handler.JobID("ƒ2222222"))]
    nested = handler.parse_target("ƒ2222222/1234")
    assert [int(j) for j in nested.jobids] == [int(handler.JobID("ƒ2222222")), 1234]


@needs_flux
def test_bare_word_is_not_a_target():
    with pytest.raises(ValueError, match="neither a URI nor a job id"):
        handler.parse_target("cluster-a")


@needs_flux
@pytest.mark.parametrize(
    "value, error",
    [
        ("local://", "names no socket path"),
        ("local:///", "names no socket path"),
        ("ssh:///tmp/x", "names no host"),
        ("ssh://host", "names no socket path"),
    ],
)
def test_unusable_uris(value, error):
    with pytest.raises(ValueError, match=error):
        handler.check_local_or_ssh(value)


@needs_flux
def test_usable_uris():
    for uri in ("local:///tmp/x/local-0", "ssh://h/tmp/x/local-0"):
        assert handler.check_local_or_ssh(uri) == uri


def test_remote_jobspec_drops_local_attributes_and_restores_environment():
    jobspec = {
        "version": 1,
        "resources": [{"type": "slot", "count": 2}],
        "tasks": [{"command": ["true"]}],
        "attributes": {
            "system": {
                "duration": 60,
                "cwd": "/tmp",
                "dependencies": [{"scheme": "delegate", "value": "x"}],
                "delegate": "random",
                "job": {"name": "n"},
            },
            "user": {"a": 1},
        },
    }
    spec = handler.remote_jobspec(jobspec, {"PATH": "/bin"})
    system = spec["attributes"]["system"]
    assert "dependencies" not in system and "delegate" not in system
    assert system["environment"] == {"PATH": "/bin"}
    assert system["duration"] == 60 and system["cwd"] == "/tmp"
    assert spec["attributes"]["user"] == {"a": 1}
    assert spec["resources"] == jobspec["resources"]
    # The local jobspec is left as it was.
    assert "dependencies" in jobspec["attributes"]["system"]
    assert "environment" not in jobspec["attributes"]["system"]


def test_remote_jobspec_without_attributes():
    spec = handler.remote_jobspec({"version": 1}, None)
    assert spec["attributes"]["system"] == {}


def event(name, **context):
    return {"timestamp": 0.0, "name": name, "context": context}


def test_outstanding_dependencies():
    eventlog = [
        event("submit"),
        event("dependency-add", description="after-success=ƒA"),
        event("dependency-add", description="delegated"),
        event("validate"),
    ]
    assert handler.outstanding_dependencies(eventlog) == {"after-success=ƒA", "delegated"}
    eventlog.append(event("dependency-remove", description="after-success=ƒA"))
    assert handler.outstanding_dependencies(eventlog) == {"delegated"}
    eventlog.append(event("dependency-remove", description="delegated"))
    assert handler.outstanding_dependencies(eventlog) == set()


def test_find_delegation():
    assert handler.find_delegation([event("submit")]) is None
    log = [event("submit"), event("delegated", jobid=42, uri="local:///x")]
    assert handler.find_delegation(log) == {"jobid": 42, "uri": "local:///x"}


def test_remote_outcome_first_fatal_exception_wins():
    outcome = handler.RemoteOutcome()
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
    outcome = handler.RemoteOutcome()
    for name, ctx in [("alloc", {}), ("start", {}), ("finish", {"status": 768}), ("clean", {})]:
        outcome.update(name, ctx)
    assert outcome.started and outcome.ended
    assert outcome.exception is None and outcome.wait_status == 768


def test_exception_notes_name_the_remote_job_and_uri():
    cancel = handler.describe_remote_exception(
        "ƒR", "local:///t", {"type": "cancel", "severity": 0, "note": "by admin"}
    )
    assert cancel == "remote job ƒR on local:///t was canceled: by admin"
    alloc = handler.describe_remote_exception(
        "ƒR", "local:///t", {"type": "alloc", "severity": 0, "note": ""}
    )
    assert alloc == "remote job ƒR on local:///t failed: alloc exception"


def test_release_updates_report_the_wait_status():
    updates = handler.release_updates(768)
    test = updates["attributes.system.exec.test"]
    assert test["wait_status"] == 768
    # A zero duration would make job-exec wait forever.
    assert test["run_duration"] != "0" and float(test["run_duration"].rstrip("s")) > 0


@needs_flux
def test_local_R_is_valid_R():
    from flux.resource import ResourceSet

    R = handler.local_R("node0", now=100.0)
    rset = ResourceSet(R)
    assert str(rset.ranks) == "0"
    assert rset.nodelist.expand() == ["node0"]
    assert R["execution"]["starttime"] == 100.0


def test_local_end_reason():
    args = {"end_event": {"name": "exception", "context": {"type": "cancel", "note": "bye"}}}
    assert handler.local_end_reason(args, "ƒL") == "cancel in the source instance (job ƒL): bye"
    assert handler.local_end_reason({}, "ƒL") == "job ƒL ended in the source instance"
