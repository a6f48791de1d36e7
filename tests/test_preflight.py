"""Unit tests of flux_delegate.preflight: what a candidate is asked, and
how its answers (or silence) become a verdict, the same for the plugin and
'flux remote check'."""

import errno
import os

from flux_delegate.policies import Candidate
from flux_delegate.preflight import (
    expired_verdict,
    feasibility_jobspec,
    record_answer,
    this_instance_verdict,
    unsent_verdict,
)
from flux_delegate.registry import Cluster


def candidate():
    return Candidate(Cluster("local:///t", "t", "user"))


def oserror(code, text=None):
    return OSError(code, text or os.strerror(code))


def test_feasibility_answers_become_verdicts():
    c = candidate()
    record_answer(c, "feasibility", None)
    assert (c.verdict, c.reason) == ("feasible", None)
    c = candidate()
    record_answer(c, "feasibility", error=oserror(errno.ENOSYS))
    assert (c.verdict, c.reason) == ("unknown", "no feasibility service")
    c = candidate()
    record_answer(c, "feasibility", error=oserror(errno.EOVERFLOW, "unsatisfiable request"))
    assert (c.verdict, c.reason) == ("infeasible", "unsatisfiable request")
    c = candidate()
    record_answer(c, "feasibility", error=oserror(errno.EINVAL, "x" * 1000))
    assert c.verdict == "infeasible" and len(c.reason) < 400  # capped, as in events


def test_pending_and_match_time_answers():
    c = candidate()
    states = {"depend": 1, "priority": 2, "sched": 3, "run": 7, "cleanup": 1}
    record_answer(c, "pending", {"job_states": states})
    assert c.pending == 6
    record_answer(c, "match_time", {"match": {"succeeded": {"stats": {"max": 0.25}}}})
    assert c.match_time == 0.25
    c = candidate()
    record_answer(c, "match_time", error=oserror(errno.ENOSYS))
    assert c.match_time is None and "runs no Fluxion" in c.reason
    c = candidate()
    record_answer(c, "pending", error=oserror(errno.EPERM))
    assert c.pending is None and c.reason.startswith("pending: ")


def test_expired_and_unsent_verdicts():
    c = candidate()
    # Answered pending, not feasibility: alive, so "unknown".
    assert expired_verdict(c, {"feasibility"}, 2, "3s") == (
        "unknown",
        "feasibility.check did not answer within 3s",
    )
    # Answered nothing: unreachable.
    verdict, reason = expired_verdict(c, {"feasibility", "pending"}, 2, "3s")
    assert verdict == "unreachable" and "answered nothing within 3s" in reason
    # Feasibility answered, a metric late: the verdict stands.
    record_answer(c, "feasibility", None)
    assert expired_verdict(c, {"pending"}, 2, "3s") == ("feasible", None)
    assert unsent_verdict(oserror(errno.ECONNRESET)) == (
        "unreachable",
        os.strerror(errno.ECONNRESET),
    )
    assert this_instance_verdict()[0] == "infeasible"




def test_feasibility_jobspec_keeps_resources_and_limits_not_the_environment():
    spec = {
        "version": 1,
        "resources": [{"type": "slot", "count": 1, "with": [{"type": "core", "count": 2}]}],
        "tasks": [{"command": ["true"], "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {
            "system": {
                "duration": 60,
                "queue": "batch",
                "environment": {"SECRET": "x" * 100000},
                "cwd": "/home/u",
            }
        },
    }
    asked = feasibility_jobspec(spec)
    assert asked["resources"] == spec["resources"]
    assert asked["attributes"]["system"] == {"duration": 60, "queue": "batch"}
    assert "SECRET" not in str(asked)


def test_metric_answers_not_understood_leave_the_metric_unknown():
    # A target may answer anything: the candidate keeps no metric and says
    # why, with the answer as data ('%n' in it).
    for odd in ([1, 2], {"job_states": {"sched": "many %n"}}, {"job_states": [1]}, "x", {"job_states": {"sched": 1e400}}):
        c = candidate()
        record_answer(c, "pending", odd)
        assert c.pending is None and c.reason.startswith("pending: an answer not understood")
    for odd in ([1], {"match": {"succeeded": {"stats": {"max": "%n"}}}}, {"match": 3},
                {"match": {"succeeded": {"stats": {"max": float("nan")}}}}):
        c = candidate()
        record_answer(c, "match_time", odd)
        assert c.match_time is None and c.reason.startswith("match_time: an answer not understood")
    c = candidate()
    record_answer(c, "pending", {"job_states": {"sched": 2, "depend": 1}})
    assert c.pending == 3 and c.reason is None
