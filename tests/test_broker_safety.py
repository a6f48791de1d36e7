"""Nothing the plugin meets can hurt the broker: not a registry file that is
no file, not thousands of unreachable targets, not a target that accepts
and never answers, not an ssh that hangs, not an exception in a site's own
reactor callback, not a target that drops its connection."""

import json
import os
import socket
import stat
import threading
import time

import pytest
from conftest import start_instance

pytestmark = pytest.mark.integration


def broker_pid(instance):
    return int(instance.run("getattr", "broker.pid").stdout)


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


class ThreadSampler:
    """The thread count of a process before a block (before) and the
    largest during it (peak), sampled every 20 ms:

        with ThreadSampler(pid) as threads:
            ...
        assert threads.peak - threads.before <= N
    """

    def __init__(self, pid):
        self.pid = pid
        self.before = self.peak = thread_count(pid)
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def sample(self):
        while self.running:
            try:
                self.peak = max(self.peak, thread_count(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def answers(instance):
    """The job-manager answers, and a plain job runs."""
    instance.run("ping", "-c", "1", "job-manager", timeout=10)
    return instance.status(instance.submit("true"), timeout=20) == 0


def load_with_registry(instance, tmp_path, uris, *conf):
    """Load the plugin with a user registry of uris (labels t0, t1, ...)."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "delegate:\n" + "".join(f"  - uri: {uri}\n    label: t{i}\n" for i, uri in enumerate(uris))
    )
    instance.load_plugin(None, f"registry={registry}", *conf)


def query(instance):
    return json.loads(instance.run("jobtap", "query", "delegate.so").stdout)


@pytest.mark.parametrize("kind", ["fifo", "device", "too-large", "not-utf8"])
def test_a_registry_that_is_no_small_regular_file_is_refused(fresh_source, tmp_path, kind):
    """Read on the job-manager's thread, so never waited on: a FIFO would
    block the open until someone writes, /dev/zero would grow without
    bound, a huge file would stall every submit."""
    path = tmp_path / "registry.yaml"
    if kind == "fifo":
        os.mkfifo(path)
        reason = "not a regular file"
    elif kind == "device":
        path = "/dev/zero"
        reason = "not a regular file"
    elif kind == "too-large":
        path.write_text("delegate:\n" + "  - local:///x/local-0\n" * 600000)
        reason = "more than the 262144 bytes it may have"
    else:
        path.write_bytes(b"delegate: [\xff]\n")
        reason = "not UTF-8 text"
    fresh_source.load_plugin(None, f"registry={path}")
    start = time.time()
    for _ in range(5):  # each unknown label looks at the file again
        proc = fresh_source.run(
            "submit", "--dependency=delegate:somewhere", "true", check=False, timeout=10
        )
        assert proc.returncode != 0
        assert "not a URI, job id, registry label or policy: 'somewhere'" in proc.stderr
    assert time.time() - start < 10
    assert reason in query(fresh_source)["user-registry-error"]
    assert answers(fresh_source)


def test_thousands_of_unreachable_targets_use_few_threads(fresh_source, tmp_path):
    uris = [f"local:///nonexistent/{i}/local-0" for i in range(2000)]
    load_with_registry(fresh_source, tmp_path, uris, "connect-timeout=3")
    pid = broker_pid(fresh_source)
    with ThreadSampler(pid) as threads:
        jobid = fresh_source.submit("--dependency=delegate", "true")
        fresh_source.wait_event(jobid, "clean", timeout=60)
    before, peak = threads.before, threads.peak
    note = fresh_source.exception(jobid)["note"]
    assert note.startswith("delegate: no target can run this job: t0 (local:///nonexistent/0/")
    assert peak - before <= 8, (before, peak)
    assert answers(fresh_source)


def silent_server(path):
    """A socket at path that accepts connections and never says a word:
    (server, accepted connections)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, accepted


def test_a_target_that_never_answers_the_handshake_costs_one_thread(fresh_source, tmp_path):
    """It accepts connections and says nothing: one connect attempt at a
    time, every job waits on that one (no thread per job), and the attempt
    ends after connect-timeout (its thread too)."""
    path = str(tmp_path / "silent")
    server, accepted = silent_server(path)
    try:
        fresh_source.load_plugin(None, "connect-timeout=2")
        pid = broker_pid(fresh_source)
        with ThreadSampler(pid) as threads:
            jobs = [fresh_source.submit(f"--dependency=delegate:local://{path}", "true") for _ in range(20)]
            notes = []
            for jobid in jobs:
                fresh_source.wait_event(jobid, "clean", timeout=30)
                notes.append(fresh_source.exception(jobid)["note"])
        before, peak = threads.before, threads.peak
        # Each job waits 2s; an attempt that later jobs kept waiting for
        # gives up by itself after 4s.
        expected = (": no answer within 2s", ": the broker accepted, but did not answer within 4s")
        assert all(
            n.startswith(f"delegate: cannot connect to local://{path}") and n.endswith(expected)
            for n in notes
        ), sorted(set(notes))
        assert peak - before <= 1, (before, peak)
        assert answers(fresh_source)
        # The attempt gives up on its own: no thread is left behind.
        deadline = time.time() + 10
        while query(fresh_source)["helper-threads"] or thread_count(pid) > before:
            assert time.time() < deadline, (query(fresh_source), thread_count(pid), before)
            time.sleep(0.1)
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_more_silent_targets_than_helpers_wait_their_turn(fresh_source, tmp_path):
    """Twenty registry entries that never answer, asked at once by one job's
    pre-flight: eight helpers at most; the twelve attempts that found none
    free before the job gave up were never started, and say so."""
    servers = [silent_server(str(tmp_path / f"silent{i}")) for i in range(20)]
    try:
        uris = [f"local://{tmp_path}/silent{i}" for i in range(20)]
        load_with_registry(fresh_source, tmp_path, uris, "connect-timeout=2")
        pid = broker_pid(fresh_source)
        with ThreadSampler(pid) as threads:
            jobid = fresh_source.submit("--dependency=delegate:random", "true")
            candidates = fresh_source.wait_event(jobid, "delegate-choice", timeout=30)["context"]["candidates"]
            fresh_source.wait_event(jobid, "clean", timeout=30)
        before, peak = threads.before, threads.peak
        assert peak - before <= 8, (before, peak)
        reasons = sorted(c["reason"] for c in candidates)
        assert all(c["verdict"] == "unreachable" for c in candidates), candidates
        assert reasons.count("no answer within 2s") == 8, reasons
        assert reasons.count("not tried within 2s: all 8 connection helpers were busy") == 12, reasons
        assert answers(fresh_source)
    finally:
        for server, accepted in servers:
            server.close()
            for conn in accepted:
                conn.close()


def test_an_ssh_that_hangs_is_ended_when_given_up(request, tmp_path):
    """The ssh flux_open() starts must not inherit the broker's blocked
    signals (it would ignore SIGTERM and outlive the job and the broker),
    and is ended once no job waits for its connection."""
    pidfile = tmp_path / "ssh.pid"
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    fake_ssh.chmod(0o755)
    source = start_instance(request, name="ssh-source", env={"FLUX_SSH": str(fake_ssh)})
    source.load_plugin(None, "connect-timeout=3")
    jobid = source.submit("--dependency=delegate:ssh://nowhere.invalid/tmp/local-0", "true")
    deadline = time.time() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.time() < deadline, "the ssh was not started"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    with open(f"/proc/{pid}/status") as fp:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in fp if ":\t" in line)
    assert int(status["SigBlk"], 16) == 0, status["SigBlk"]

    source.wait_event(jobid, "clean", timeout=30)
    assert "no answer within 3s" in source.exception(jobid)["note"]
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read():
        assert time.time() < deadline, "the ssh of a connect given up still runs"
        time.sleep(0.1)
    assert answers(source)


def test_an_exception_in_a_site_callback_does_not_stop_the_job_manager(request, fresh_source, tmp_path):
    """A site policy that puts a timer of its own on the job-manager's
    reactor, whose callback raises: logged, and the instance goes on."""
    target = start_instance(request, name="site-callback-target")
    policy = tmp_path / "noisy_policy.py"
    policy.write_text(
        "from flux_delegate.jobmanager import current\n"
        "keep = []\n"
        "def boom(*args):\n"
        "    raise ZeroDivisionError('site timer %n%n%n%n')\n"
        "def first(job, candidates):\n"
        "    watcher = current.runtime.handle.timer_watcher_create(0.01, boom)\n"
        "    watcher.start()\n"
        "    keep.append(watcher)\n"
        "    return candidates\n"
    )
    fresh_source.load_plugin()
    fresh_source.run(
        "config", "load",
        input=f'[[delegate]]\nlabel = "t"\nuri = "{target.uri}"\n'
        f'[delegate-policy.custom]\nnoisy = "{policy}:first"\n',
    )
    jobid = fresh_source.submit("--dependency=delegate:noisy", "true")
    assert fresh_source.status(jobid) == 0
    deadline = time.time() + 10
    while "uncaught in a reactor callback (ignored)" not in fresh_source.dmesg():
        assert time.time() < deadline, fresh_source.dmesg()[-2000:]
        time.sleep(0.1)
    dmesg = fresh_source.dmesg()
    assert "ZeroDivisionError: site timer %n%n%n%n" in dmesg
    assert answers(fresh_source)
    assert fresh_source.status(fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")) == 0


def test_a_dropped_target_leaves_no_tracebacks_on_the_broker_stderr(request, fresh_source):
    """Watches on a lost connection are let go without trying to send their
    cancel (which printed 'Exception ignored in ... BrokenPipeError')."""
    from flux_instance import FluxInstance

    target = FluxInstance(name="dropping").start()
    try:
        fresh_source.load_plugin(None, "reconnect-timeout=1", "reconnect-interval=0.5")
        jobs = [fresh_source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300") for _ in range(3)]
        for jobid in jobs:
            fresh_source.wait_event(jobid, "delegated")
        target.kill()
    finally:
        target.cleanup()
    for jobid in jobs:
        fresh_source.wait_event(jobid, "clean", timeout=30)
        assert "lost contact" in fresh_source.exception(jobid)["note"]
    fresh_source.remove_plugin()  # collects what the handler let go
    assert answers(fresh_source)
    log = fresh_source.broker_log()
    assert "Exception ignored" not in log and "BrokenPipeError" not in log, log


def test_the_job_manager_thread_leaves_signal_dispositions_alone(request, fresh_source, tmp_path):
    """The broker owns signals: delegating jobs makes no sigaction(2) call
    on the job-manager's thread (flux's future.get() resets SIGINT around
    every call in a script's main thread, which the job-manager's thread
    is to the embedded interpreter)."""
    import shutil
    import subprocess

    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace is not installed")
    target = start_instance(request, name="signals-target")
    fresh_source.load_plugin()
    pid = broker_pid(fresh_source)
    jm = [t for t in os.listdir(f"/proc/{pid}/task")
          if open(f"/proc/{pid}/task/{t}/comm").read().strip() == "job-manager"][0]
    log = str(tmp_path / "job-manager.strace")
    trace = subprocess.Popen(
        [strace, "-p", jm, "-e", "trace=rt_sigaction", "-o", log],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1)  # attached
        for _ in range(3):
            jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
            assert fresh_source.status(jobid) == 0
    finally:
        trace.terminate()
        trace.wait()
    with open(log) as fp:
        calls = [line for line in fp if "rt_sigaction" in line]
    assert calls == []
