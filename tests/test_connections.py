"""Connections to targets that die, hang or restart: the source instance
is never hurt, and a job is followed again when its target comes back."""

import os
import signal
import tempfile

import pytest
from conftest import start_instance
from flux_instance import FluxInstance

pytestmark = pytest.mark.integration


def test_target_killed_while_running_a_job(fresh_source):
    target = FluxInstance(name="doomed").start()
    try:
        pid = int(target.run("getattr", "broker.pid").stdout)
        fresh_source.load_plugin(None, "reconnect-timeout=2", "reconnect-interval=0.5")
        jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
        rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
        target.wait_event(rid, "start")
        os.kill(pid, signal.SIGKILL)
    finally:
        target.cleanup()
    # The source is unharmed; the job ends with a note saying what happened.
    fresh_source.wait_event(jobid, "clean", timeout=30)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert f"lost contact with remote job" in exc["note"] and target.uri in exc["note"]
    assert "cannot reconnect" in exc["note"]
    assert fresh_source.status(fresh_source.submit("true"), timeout=10) == 0
    assert fresh_source.run("jobtap", "list").stdout.strip() == "delegate.so"


def test_target_restart_is_followed_through(request, fresh_source):
    """A target restarted with its state: the pending remote job survives,
    the source reconnects and the local job ends with the remote outcome."""
    base = tempfile.mkdtemp(prefix="delegate-restarting-")
    rundir, statedir = os.path.join(base, "run"), os.path.join(base, "state")
    os.makedirs(rundir)
    os.makedirs(statedir)
    target = FluxInstance(name="restarting-target", rundir=rundir, statedir=statedir)
    request.addfinalizer(target.cleanup)
    target.start()
    target.run("queue", "stop")
    uri = target.uri
    fresh_source.load_plugin(None, "reconnect-interval=0.5")
    jobid = fresh_source.submit(f"--dependency=delegate:{uri}", "sh", "-c", "exit 6")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])

    target.stop()
    target.start()
    assert target.uri == uri
    target.run("queue", "start")
    assert fresh_source.status(jobid, timeout=60) == 6
    dmesg = fresh_source.dmesg()
    assert "lost contact with" in dmesg and "reconnecting" in dmesg
    assert target.run("jobs", "-n", "-o", "{result}", rid).stdout.strip() == "FAILED"
