"""Bad inputs and failing targets: a clear message, never a hang or a loss."""

import os

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def strict_target(request):
    """A target whose policy rejects jobs longer than a minute."""
    from conftest import start_instance

    return start_instance(
        request, name="strict-target", config='[policy.limits]\nduration = "1m"\n'
    )


def fails_fast(source, jobid, limit=20.0):
    """Wait for the job to end; return its DelegationFailure context after
    checking it ended within 'limit' seconds of submission (a bound that
    tells "ended" from "hung"; how fast is measured by the benchmark)."""
    clean = source.wait_event(jobid, "clean", timeout=30)
    submit = source.eventlog(jobid)[0]
    assert clean["timestamp"] - submit["timestamp"] < limit
    exc = source.exception(jobid)
    assert exc is not None, source.eventlog(jobid)
    assert exc["type"] == "DelegationFailure"
    assert exc["severity"] == 0
    assert "delegated" not in [e["name"] for e in source.eventlog(jobid)]
    return exc


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "no delegation targets are configured"),
        ("cluster-that-is-not-a-uri", "not a URI, job id, registry label or policy:"
         " 'cluster-that-is-not-a-uri'"),
        ("local://", "the URI names no socket path: 'local://'"),
        ("ssh:///tmp/socket", "the URI names no host: 'ssh:///tmp/socket'"),
        ("pid:", "pid: needs a process id (pid:PID), not 'pid:'"),
        ("pid:abc", "pid: needs a process id (pid:PID), not 'pid:abc'"),
        ("LOCAL:///tmp/x", "not a local:// or ssh:// URI: 'LOCAL:///tmp/x'"),
        ("local:%n;", "not a local:// or ssh:// URI: 'local:%n;'"),
        ("local://host/tmp/x", "a local:// URI names no host (local:///path)"),
        ("\u00a0", "white space or control characters"),
        ("é" * 600, "not a URI, job id, registry label or policy: '" + "é" * 30 + "...(600 characters)'"),
        ("%n" * 50000, "not a URI, job id, registry label or policy: '" + "%n" * 20 + "...(100000 characters)'"),
    ],
)
def test_value_wrong_on_its_face_is_rejected_at_submit(source, value, message):
    """The reason comes first and whole, whatever the value's length (flux
    keeps 160 bytes of a rejection, cut here on a character boundary)."""
    proc = source.run("submit", f"--dependency=delegate:{value}", "true", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "delegate:" in proc.stderr


def test_one_delegate_dependency_per_job(source, target):
    proc = source.run(
        "submit", f"--dependency=delegate:{target.uri}", "--dependency=delegate:nowhere",
        "true", check=False,
    )
    assert proc.returncode != 0
    assert "a job takes one delegate dependency; this one has more" in proc.stderr
    proc = source.run(
        "submit", "-S", "system.delegate=elsewhere", f"--dependency=delegate:{target.uri}",
        "true", check=False,
    )
    assert proc.returncode != 0
    assert (
        "use either --dependency=delegate:TARGET or -S system.delegate=TARGET, not both"
        in proc.stderr
    )


def test_a_job_is_never_delegated_to_its_own_instance(source):
    uri = source.run("getattr", "local-uri").stdout.strip()
    proc = source.run("submit", f"--dependency=delegate:{uri}", "true", check=False)
    assert proc.returncode != 0
    assert "a job is not delegated to the instance it was submitted to" in proc.stderr
    # Named another way: the broker's pid.
    pid = source.run("getattr", "broker.pid").stdout.strip()
    jobid = source.submit(f"--dependency=delegate:pid:{pid}", "true")
    exc = fails_fast(source, jobid)
    assert "a job is not delegated to the instance it was submitted to" in exc["note"]
    assert f"'{uri}' is this instance" in exc["note"]


def test_a_link_to_its_own_socket_is_found_off_the_job_managers_thread(source, tmp_path):
    """Another path to the instance's own socket takes a stat to see, which
    the job-manager's thread does not do on a path a user gave (a hung file
    system would stall it): the connecting thread finds it, and the job
    fails with the reason, sent nowhere."""
    socket_path = source.run("getattr", "local-uri").stdout.strip()[len("local://"):]
    link = tmp_path / "link-to-own-socket"
    link.symlink_to(socket_path)
    jobid = source.submit(f"--dependency=delegate:local://{link}", "true")
    exc = fails_fast(source, jobid)
    assert "a job is not delegated to the instance it was submitted to" in exc["note"]
    assert "this instance's own socket" in exc["note"]
    assert "delegated" not in [e["name"] for e in source.eventlog(jobid)]


@pytest.mark.parametrize(
    "value, note",
    [
        ("foo://bar/baz", "unknown URI scheme 'foo'"),
        ("jobid:not-a-job", "not a job id: 'not-a-job'"),
        ("local:///nonexistent/flux/local-0", "cannot connect to"),
        ("pid:999999999", "no such process on"),
    ],
)
def test_failure_before_remote_job_exists(source, value, note):
    jobid = source.submit(f"--dependency=delegate:{value}", "true")
    exc = fails_fast(source, jobid)
    assert note in exc["note"]
    assert value in exc["note"]


def test_pid_of_a_process_that_is_no_flux_instance(source):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "FLUX_URI"}
    proc = subprocess.Popen(["sleep", "60"], env=env)
    try:
        value = f"pid:{proc.pid}"
        jobid = source.submit(f"--dependency=delegate:{value}", "true")
        exc = fails_fast(source, jobid)
        assert f"cannot use '{value}': PID {proc.pid} doesn't seem to have a FLUX_URI" in exc["note"]
    finally:
        proc.kill()
        proc.wait()


def test_job_id_of_a_job_that_runs_no_instance(source):
    plain = source.submit("true")
    source.status(plain)
    jobid = source.submit(f"--dependency=delegate:{plain}", "true")
    exc = fails_fast(source, jobid)
    assert f"job {plain} is not running" in exc["note"]


def test_job_id_that_does_not_exist(source):
    jobid = source.submit("--dependency=delegate:ƒ2222222", "true")
    exc = fails_fast(source, jobid)
    assert "not found" in exc["note"] and "ƒ2222222" in exc["note"]


def test_target_rejects_the_jobspec(source, strict_target):
    jobid = source.submit(
        f"--dependency=delegate:{strict_target.uri}", "-t", "1h", "true"
    )
    exc = fails_fast(source, jobid)
    assert f"submit to {strict_target.uri} failed" in exc["note"]
    assert "duration" in exc["note"]
    assert strict_target.jobs() == []


def test_infeasible_job_is_never_sent(source, target):
    # More cores than the target has: its feasibility check says no, and no
    # remote job is created.
    before = len(target.jobs())
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "-n", "64", "true")
    exc = fails_fast(source, jobid)
    assert f"{target.uri} cannot run this job" in exc["note"]
    assert "unsatisfiable" in exc["note"].lower()  # sched-simple or Fluxion
    assert len(target.jobs()) == before
    choice = source.wait_event(jobid, "delegate-choice")["context"]
    assert choice["candidates"] == [
        {"uri": target.uri, "verdict": "infeasible", "reason": choice["candidates"][0]["reason"]}
    ]
    assert choice["choice"] is None


def test_stopped_target(source):
    from flux_instance import FluxInstance

    gone = FluxInstance(name="gone").start()
    uri = gone.uri
    gone.cleanup()
    jobid = source.submit(f"--dependency=delegate:{uri}", "true")
    exc = fails_fast(source, jobid)
    assert uri in exc["note"]
    # The broker is still fine: a plain job runs.
    assert source.status(source.submit("true")) == 0


def test_hung_target_does_not_stall_the_source(fresh_source, request):
    """A target whose broker is stopped accepts the connection but never
    answers: the connection attempt runs off the job-manager's thread, the
    job fails after connect-timeout, and the source keeps working."""
    import os
    import signal
    import time

    from flux_instance import FluxInstance

    hung = FluxInstance(name="hung").start()
    request.addfinalizer(hung.cleanup)
    pid = int(hung.run("getattr", "broker.pid").stdout)
    os.kill(pid, signal.SIGSTOP)
    request.addfinalizer(lambda: os.kill(pid, signal.SIGCONT))

    fresh_source.load_plugin(None, "connect-timeout=3")
    jobid = fresh_source.submit(f"--dependency=delegate:{hung.uri}", "true")
    start = time.time()
    # While the connection hangs, the job-manager serves other jobs.
    assert fresh_source.status(fresh_source.submit("true"), timeout=10) == 0
    assert time.time() - start < 2.5
    exc = fails_fast(fresh_source, jobid, limit=10)
    assert f"cannot connect to {hung.uri}: no answer within 3s" in exc["note"]


def test_unresolvable_ssh_host(source):
    uri = "ssh://host.invalid/tmp/flux-x/local-0"
    jobid = source.submit(f"--dependency=delegate:{uri}", "true")
    exc = fails_fast(source, jobid, limit=30)
    assert f"cannot connect to {uri}" in exc["note"]
