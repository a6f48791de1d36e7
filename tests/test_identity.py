"""A remote job is known by its origin record, never by its id alone.

A target replaced by a fresh instance at the same URI numbers its jobs from
the same start, so after a reconnect the id a local job followed may
belong to a stranger.  Whenever the plugin reaches a remote job over a
connection other than the one it submitted it on, it checks the job's
origin (attributes.system.delegate-origin) first: a stranger is neither
followed, mirrored nor canceled, and a remote job that is gone ends the
local one with a DelegationFailure saying so.
"""

import os
import signal
import tempfile
import time

import pytest
from flux_instance import FluxInstance

pytestmark = pytest.mark.integration

#: Rewrites, on a target, the origin a remote job records: it becomes a
#: job made for someone else (what a job of a replaced target is).
MAKE_STRANGER = """
import sys, flux, flux.kvs
from flux.job import JobID
h = flux.Flux()
key = JobID(sys.argv[1]).kvs + ".jobspec"
spec = flux.kvs.get(h, key)
spec["attributes"]["system"]["delegate-origin"]["jobid"] = 12345
flux.kvs.put(h, key, spec)
flux.kvs.commit(h)
"""


def f58(jobid):
    from flux.job import JobID

    return JobID(int(jobid)).f58


def held_target(request, name):
    """A target whose queue is stopped: delegated jobs stay pending there."""
    target = FluxInstance(name=name).start()
    request.addfinalizer(target.cleanup)
    target.run("queue", "stop")
    return target


def delegate_pending(source, target):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    return jobid, rid


def remote_state(target, rid):
    return target.run("jobs", "-n", "-o", "{state}", rid).stdout.strip()


def reload_plugin(source, *conf):
    source.remove_plugin()
    source.load_plugin(None, *conf)


def test_a_stranger_at_the_remote_id_is_neither_followed_nor_canceled(request, fresh_source):
    target = held_target(request, "replaced")
    fresh_source.load_plugin(None)
    jobid, rid = delegate_pending(fresh_source, target)

    target.run("python", "-c", MAKE_STRANGER, rid)
    reload_plugin(fresh_source)  # follows rid again over a new connection

    fresh_source.wait_event(jobid, "clean", timeout=30)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert f"remote job {f58(rid)} on {target.uri} is not this job's" in exc["note"], exc
    assert "made for job" in exc["note"]
    # The stranger is left alone: still pending, no exception.
    assert remote_state(target, rid) == "SCHED"
    assert not [e for e in target.eventlog(rid) if e["name"] == "exception"]


def test_a_cancel_never_reaches_a_stranger(request, fresh_source):
    """Canceled while the target cannot be reached: the cancel, sent once it
    answers again, checks whose job it is first."""
    target = held_target(request, "replaced-for-cancel")
    broker = int(target.run("getattr", "broker.pid").stdout)
    fresh_source.load_plugin(None, "connect-timeout=60")
    jobid, rid = delegate_pending(fresh_source, target)
    target.run("python", "-c", MAKE_STRANGER, rid)

    os.kill(broker, signal.SIGSTOP)
    try:
        reload_plugin(fresh_source, "connect-timeout=60")  # reconnect hangs
        fresh_source.run("cancel", jobid)
        fresh_source.wait_event(jobid, "clean", timeout=30)
    finally:
        os.kill(broker, signal.SIGCONT)
    deadline = time.time() + 30
    while "not canceling" not in fresh_source.dmesg():
        assert time.time() < deadline, fresh_source.dmesg()[-3000:]
        time.sleep(0.2)
    assert f"not canceling {f58(rid)} on {target.uri}: it is not this job's" in fresh_source.dmesg()
    assert remote_state(target, rid) == "SCHED"
    assert not [e for e in target.eventlog(rid) if e["name"] == "exception"]
    assert fresh_source.exception(jobid)["type"] == "cancel"


def test_a_cancel_of_the_same_job_still_reaches_it_after_a_reconnect(request, fresh_source):
    """The counterpart: a remote job that is this job's is canceled."""
    target = held_target(request, "same-for-cancel")
    broker = int(target.run("getattr", "broker.pid").stdout)
    fresh_source.load_plugin(None, "connect-timeout=60")
    jobid, rid = delegate_pending(fresh_source, target)

    os.kill(broker, signal.SIGSTOP)
    try:
        reload_plugin(fresh_source, "connect-timeout=60")
        fresh_source.run("cancel", jobid)
        fresh_source.wait_event(jobid, "clean", timeout=30)
    finally:
        os.kill(broker, signal.SIGCONT)
    event = target.wait_event(rid, "exception", timeout=30)
    assert event["context"]["type"] == "cancel"


def test_a_target_replaced_by_a_fresh_instance(request, fresh_source):
    """Killed and replaced at the same URI by an instance without its state:
    the remote job is gone, the local one says so, and the new instance's
    own jobs are not touched."""
    rundir = os.path.join(tempfile.mkdtemp(prefix="delegate-replaced-"), "run")
    os.makedirs(rundir)
    first = FluxInstance(name="first", rundir=rundir).start()
    request.addfinalizer(first.cleanup)
    first.run("queue", "stop")
    fresh_source.load_plugin(None, "reconnect-interval=3", "reconnect-timeout=60")
    jobid, rid = delegate_pending(fresh_source, first)

    first.kill()
    second = FluxInstance(name="second", rundir=rundir).start()
    request.addfinalizer(second.cleanup)
    assert second.uri == first.uri
    own = second.submit("sleep", "300")

    fresh_source.wait_event(jobid, "clean", timeout=60)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert f"remote job {f58(rid)} on {second.uri} no longer exists" in exc["note"], exc
    second.wait_event(own, "start", timeout=30)
    assert remote_state(second, own) == "RUN"
    assert not [e for e in second.eventlog(own) if e["name"] == "exception"]
