"""Connections to targets that die, hang or restart: the source instance
is never hurt, and a job is followed again when its target comes back."""

import json
import os
import signal
import tempfile

import pytest
from conftest import start_instance
from flux_instance import FluxInstance, fds_grown, settled_fds

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
    assert "lost contact with remote job" in exc["note"] and target.uri in exc["note"]
    assert "cannot reconnect" in exc["note"]
    assert fresh_source.status(fresh_source.submit("true"), timeout=10) == 0
    assert fresh_source.run("jobtap", "list").stdout.strip() == "delegate.so"


def test_lost_connections_are_not_kept(quiet_source):
    """A connection lost with its target is closed at once: its socket,
    poll fds and reactor are not kept for as long as the broker runs, and a
    target lost again and again does not make the broker hold more."""
    pid = int(quiet_source.run("getattr", "broker.pid").stdout)
    quiet_source.load_plugin(None, "reconnect-timeout=1", "reconnect-interval=0.5")
    assert quiet_source.status(quiet_source.submit("true")) == 0
    before = settled_fds(pid)
    for i in range(3):
        target = FluxInstance(name=f"lost-{i}").start()
        try:
            tpid = int(target.run("getattr", "broker.pid").stdout)
            jobid = quiet_source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
            rid = str(quiet_source.wait_event(jobid, "delegated")["context"]["jobid"])
            target.wait_event(rid, "start")
            os.kill(tpid, signal.SIGKILL)
        finally:
            target.cleanup()
        quiet_source.wait_event(jobid, "clean", timeout=30)
        assert "lost contact" in quiet_source.exception(jobid)["note"]
    after = settled_fds(pid, at_most=before)
    grown = fds_grown(before, after)
    assert not grown, f"3 lost connections: {dict(before)} -> {dict(after)}"
    assert quiet_source.dmesg().count("connection to local://") >= 3
    # Destroying the futures on them raised nothing, even on stderr.
    assert "Traceback" not in quiet_source.dmesg()
    assert "Exception ignored" not in quiet_source.broker_log(tail=None)


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


def stoppable_target(request, name):
    """A target that keeps its URI and its jobs across a restart; its queue
    is stopped, so delegated jobs stay pending there."""
    base = tempfile.mkdtemp(prefix=f"delegate-{name}-")
    rundir, statedir = os.path.join(base, "run"), os.path.join(base, "state")
    os.makedirs(rundir)
    os.makedirs(statedir)
    target = FluxInstance(name=name, rundir=rundir, statedir=statedir)
    request.addfinalizer(target.cleanup)
    target.start()
    target.run("queue", "stop")
    return target


def test_cancel_while_the_target_is_down_reaches_it_later(request, fresh_source):
    target = stoppable_target(request, "down-target")
    fresh_source.load_plugin(None, "reconnect-interval=0.5")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    target.stop()
    fresh_source.run("cancel", jobid)
    fresh_source.wait_event(jobid, "clean")
    target.start()
    try:
        exc = target.wait_event(rid, "exception", timeout=30)["context"]
    except Exception as error:
        raise AssertionError(f"{error}\nsource log:\n{fresh_source.dmesg()[-4000:]}")
    assert exc["type"] == "cancel" and jobid in exc["note"]


def wait_for_watchers(target, count, timeout=10):
    """Wait until the target's job-info has 'count' eventlog watchers."""
    import json
    import time

    deadline = time.time() + timeout
    while True:
        stats = json.loads(target.run("module", "stats", "job-info").stdout)
        if stats["watchers"] >= count:
            return
        assert time.time() < deadline, f"job-info watchers: {stats}"
        time.sleep(0.1)


HUNG_JOB_INFO = """
import flux, sys
h = flux.Flux()
h.service_register("job-info").get()
keep = h.msg_watcher_create(lambda *args: None, topic_glob="job-info.*")
keep.start()
print("ready", flush=True)
h.reactor_run()
"""


def test_a_watch_never_answered_is_given_up_within_reconnect_timeout(
    request, fresh_source
):
    """A target whose job-info takes requests and never answers them: the
    job does not stay pending for ever, and its remote job is canceled."""
    import subprocess

    target = stoppable_target(request, "hung-job-info")
    target.run("module", "remove", "job-info")
    hung = subprocess.Popen(
        ["flux", "python", "-c", HUNG_JOB_INFO],
        env=target.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    request.addfinalizer(hung.kill)
    assert hung.stdout.readline().strip() == "ready"

    # The watch is what is tested: the journal, which would bring the
    # job's events without job-info, is off.
    fresh_source.load_plugin(
        None, "submit-timeout=1", "reconnect-timeout=3", "reconnect-interval=0.5", "journal=false"
    )
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    fresh_source.wait_event(jobid, "clean", timeout=30)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert "lost contact with remote job" in exc["note"]
    assert "its job-info did not answer within 1s" in exc["note"]
    assert "reconnecting" in fresh_source.dmesg()  # it was tried again
    result = target.run("jobs", "-a", "-n", "-o", "{result}", rid).stdout.strip()
    assert result == "CANCELED"


def test_persistent_watch_error_ends_within_reconnect_timeout(request, fresh_source):
    target = stoppable_target(request, "broken-target")
    # submit-timeout bounds the wait for a watch that job-info, while it
    # unloads, takes and never answers.
    fresh_source.load_plugin(
        None, "reconnect-timeout=3", "reconnect-interval=0.5", "submit-timeout=2", "journal=false"
    )
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    # The source's watch is in place (not still on its way to job-info)...
    wait_for_watchers(target, 1)
    # ...and then the target cannot be followed, though it answers.
    target.run("module", "remove", "job-info")
    fresh_source.wait_event(jobid, "clean", timeout=30)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert "lost contact with remote job" in exc["note"] and "for 3s" in exc["note"]
    # It was not left to run on its own.
    target.run("module", "load", "job-info")
    cancel = target.wait_event(rid, "exception", timeout=30)["context"]
    assert cancel["type"] == "cancel" and "delegation failed" in cancel["note"]


#: A 1 MiB environment: ten variables of 100 KiB.
MEGABYTE_ENV = {f"DELEGATE_TEST_BULK{i}": "x" * (100 * 1024) for i in range(10)}


def test_target_that_stops_reading_never_blocks_the_source(request, fresh_source):
    """A stopped target reads nothing: requests wait until its socket has
    room instead of blocking the job-manager, whatever the jobspec's size
    (the pre-flight sends no environment), and their jobs end when their
    own timeouts run out, saying the target was connected but silent."""
    import time

    target = start_instance(request, name="not-reading")
    fresh_source.load_plugin(None, "preflight-timeout=2", "connect-timeout=2")
    warm = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(warm) == 0  # the connection is open
    pid = int(target.run("getattr", "broker.pid").stdout)
    os.kill(pid, signal.SIGSTOP)
    request.addfinalizer(lambda: os.kill(pid, signal.SIGCONT))
    # Silent for over a second: its "feasible" of a moment ago no longer
    # stands for it (preflight-cache): each job asks, and is not answered.
    time.sleep(1.5)

    big = {"DELEGATE_TEST_BULK": "x" * (100 * 1024)}  # 100 KiB environment
    jobs = [
        fresh_source.run("submit", f"--dependency=delegate:{target.uri}", "true", env=env)
        .stdout.strip()
        for env in [big] * 6 + [MEGABYTE_ENV] * 2
    ]
    start = time.time()
    fresh_source.run("ping", "-c", "3", "job-manager", timeout=10)
    assert fresh_source.status(fresh_source.submit("true"), timeout=10) == 0
    assert fresh_source.run("jobtap", "list", timeout=10).stdout.strip() == "delegate.so"
    assert time.time() - start < 5
    notes = []
    for jobid in jobs:
        fresh_source.wait_event(jobid, "clean", timeout=30)
        notes.append(fresh_source.exception(jobid)["note"])
    expected = f"{target.uri} did not answer: connected, but it answered nothing within 2s"
    assert all(expected in n for n in notes), notes
    assert not any("cannot connect" in n for n in notes), notes


#: Submits a job with a user attribute of N bytes: a jobspec larger than
#: any environment exec(2) would pass to 'flux submit'.
SUBMIT_LARGE = """
import sys, flux, flux.job
js = flux.job.JobspecV1.from_command(["true"])
js.setattr("system.dependencies", [{"scheme": "delegate", "value": sys.argv[1]}])
js.setattr("user.blob", "x" * int(sys.argv[2]))
print(flux.job.JobID(flux.job.submit(flux.Flux(), js)).f58)
"""


def test_a_jobspec_too_large_for_the_socket_is_delegated_whole(request, fresh_source):
    """A jobspec too large for the connection's socket buffer cannot be
    written without waiting for the target to read it: it goes over a
    connection of its own, from a helper thread, and arrives whole."""
    target = start_instance(request, name="large-jobspec")
    fresh_source.load_plugin(None)
    assert fresh_source.status(fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")) == 0
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    size = query["send-buffers"][target.uri] // 2 + 1024 * 1024

    jobid = fresh_source.run("python", "-c", SUBMIT_LARGE, target.uri, str(size)).stdout.strip()
    assert fresh_source.status(jobid) == 0, fresh_source.eventlog(jobid)
    assert "over a connection of its own" in fresh_source.dmesg()
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    spec = json.loads(target.run("job", "info", rid, "jobspec").stdout)
    assert len(spec["attributes"]["user"]["blob"]) == size


#: A job-ingest that takes submits and never answers them.
HUNG_JOB_INGEST = HUNG_JOB_INFO.replace("job-info", "job-ingest")


def test_an_oversized_submit_never_answered_does_not_keep_its_helper(request, fresh_source):
    """The helper thread that sends an oversized jobspec waits for the
    answer no longer than the submit does: a target whose job-ingest never
    answers fails the job, and leaves no thread behind (eight such would
    have stopped every connection to every target)."""
    import subprocess
    import time

    target = start_instance(request, name="hung-job-ingest")
    fresh_source.load_plugin(None, "submit-timeout=2")
    assert fresh_source.status(fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")) == 0
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    size = query["send-buffers"][target.uri] // 2 + 1024 * 1024
    target.run("module", "remove", "job-ingest")
    hung = subprocess.Popen(
        ["flux", "python", "-c", HUNG_JOB_INGEST], env=target.env(), stdout=subprocess.PIPE, text=True
    )
    request.addfinalizer(hung.kill)
    assert hung.stdout.readline().strip() == "ready"

    jobid = fresh_source.run("python", "-c", SUBMIT_LARGE, target.uri, str(size)).stdout.strip()
    fresh_source.wait_event(jobid, "clean", timeout=60)
    assert "over a connection of its own" in fresh_source.dmesg()
    assert fresh_source.exception(jobid)["type"] == "DelegationFailure"
    deadline = time.time() + 15
    while json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)["helper-threads"]:
        assert time.time() < deadline, "the helper thread is still waiting"
        time.sleep(0.2)


#: A proxy to a target's socket that passes everything both ways, but
#: stops reading what a client sends once it has passed 1 MiB of it: a
#: target that stopped reading its socket in the middle of a large message
#: (SIGSTOP, a hung ssh), while its other connections work.
STOPS_READING = r"""
import select, socket, sys
listen_path, target_path = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(listen_path)
server.listen(64)
peer, passed = {}, {}
print("ready", flush=True)
while True:
    readable = [server] + [s for s in peer if passed.get(s, 0) <= 1 << 20]
    for sock in select.select(readable, [], [])[0]:
        if sock is server:
            client, _ = server.accept()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(target_path)
            peer[client], peer[upstream] = upstream, client
            passed[client] = 0
            continue
        data = sock.recv(65536)
        other = peer[sock]
        if not data:
            for s in (sock, other):
                peer.pop(s, None)
                passed.pop(s, None)
                s.close()
            continue
        if sock in passed:
            passed[sock] += len(data)
        other.sendall(data)
"""


def test_an_oversized_submit_to_a_target_that_stops_reading_does_not_keep_its_helper(
    request, fresh_source, tmp_path
):
    """flux_send() of an oversized jobspec waits for the target to read
    it: a target that stops reading fails the job at submit-timeout, and
    the helper thread's send is cut off then (its socket shut down), not
    left waiting for ever."""
    import subprocess
    import time

    target = start_instance(request, name="stops-reading")
    path = str(tmp_path / "stops-reading.sock")
    proxy = subprocess.Popen(
        ["flux", "python", "-c", STOPS_READING, path, target.uri[len("local://") :]],
        stdout=subprocess.PIPE,
        text=True,
    )
    request.addfinalizer(proxy.kill)
    assert proxy.stdout.readline().strip() == "ready"
    uri = f"local://{path}"
    fresh_source.load_plugin(None, "submit-timeout=2")
    assert fresh_source.status(fresh_source.submit(f"--dependency=delegate:{uri}", "true")) == 0
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    size = query["send-buffers"][uri] // 2 + 1024 * 1024
    jobid = fresh_source.run("python", "-c", SUBMIT_LARGE, uri, str(size)).stdout.strip()
    fresh_source.wait_event(jobid, "clean", timeout=60)
    assert "over a connection of its own" in fresh_source.dmesg()
    exception = fresh_source.exception(jobid)
    assert exception["type"] == "DelegationFailure" and "within 2s" in exception["note"], exception
    deadline = time.time() + 15
    while json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)["helper-threads"]:
        assert time.time() < deadline, "the helper thread is still sending"
        time.sleep(0.2)
