"""A delegated job's local state follows its remote job (starting.py):
pending (DEPEND) while the remote job is, running (RUN, state R in 'flux
jobs') from the remote alloc to the remote end, then ended with the
remote's status; through a cancel on either side, a reload and a restart
of the source."""

import json
import tempfile
import time

import pytest
from flux_instance import FluxInstance

pytestmark = pytest.mark.integration


def state(instance, jobid):
    return instance.run("jobs", "-no", "{state}", jobid).stdout.strip()


def listing(instance, jobid):
    return json.loads(instance.run("jobs", "-a", "--json", jobid).stdout)


def annotation(instance, jobid):
    return listing(instance, jobid).get("annotations", {}).get("user", {}).get("delegate")


def wait_state(instance, jobid, wanted, timeout=30):
    deadline = time.time() + timeout
    while (now := state(instance, jobid)) != wanted:
        assert time.time() < deadline, f"{jobid} is {now}, not {wanted}"
        time.sleep(0.1)


def block(target):
    """A job that holds all of the target's cores: what is sent there waits."""
    blocker = target.submit("--exclusive", "-N1", "sleep", "300")
    target.wait_event(blocker, "start")
    return blocker


def test_the_local_job_is_pending_then_runs_exactly_while_its_remote_job_does(source, target):
    blocker = block(target)
    try:
        jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 2; exit 3")
        rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
        # The remote job waits behind the blocker: so does the local one.
        time.sleep(1)
        assert target.run("jobs", "-no", "{state}", rid).stdout.strip() == "SCHED"
        assert state(source, jobid) == "DEPEND"
        assert annotation(source, jobid)["state"] == "pending"
    finally:
        target.run("cancel", blocker)
    target.wait_event(rid, "alloc")
    wait_state(source, jobid, "RUN", timeout=10)
    assert target.run("jobs", "-no", "{state}", rid).stdout.strip() == "RUN"
    shown = listing(source, jobid)
    assert shown["annotations"]["user"]["delegate"]["state"] == "running"
    assert shown["annotations"]["user"]["delegate"]["jobid"] == (
        target.run("job", "id", "--to=f58", rid).stdout.strip()
    )
    # Its runtime counts while it runs.
    first = float(listing(source, jobid)["runtime"])
    time.sleep(0.5)
    assert float(listing(source, jobid)["runtime"]) > first
    # Nothing runs here: its exec eventlog is the plugin's, not a shell's.
    shell = [e for e in source.eventlog(jobid, "guest.exec.eventlog") if e["name"] == "shell.init"]
    assert [e["context"]["service"] for e in shell] == ["delegate-nostdin"]
    assert source.status(jobid) == 3
    assert annotation(source, jobid)["state"] == "ended"
    # Its start and end are about the remote run's (the mirror's lag).
    here, there = listing(source, jobid), listing(target, rid)
    assert abs(here["t_run"] - there["t_run"]) < 1.0, (here["t_run"], there["t_run"])
    assert abs(here["t_cleanup"] - there["t_cleanup"]) < 1.0
    assert 1.5 < here["runtime"] < there["runtime"] + 1.0
    names = [e["name"] for e in source.eventlog(jobid)]
    assert names.count("alloc") == 1 and names.count("finish") == 1 and "exception" not in names


def test_a_running_delegated_job_canceled_here_cancels_its_remote_job(source, target):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    wait_state(source, jobid, "RUN")
    source.run("cancel", jobid)
    exception = target.wait_event(rid, "exception")["context"]
    assert exception["type"] == "cancel"
    source.wait_event(jobid, "clean")  # our prolog closed: nothing is left open
    assert source.exception(jobid)["type"] == "cancel"


def test_a_running_delegated_job_whose_remote_job_is_canceled_fails(source, target):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    wait_state(source, jobid, "RUN")
    target.run("cancel", rid)
    source.wait_event(jobid, "clean")
    exception = source.exception(jobid)
    assert exception["type"] == "DelegationFailure"
    assert rid in exception["note"] or "cancel" in exception["note"]


def test_mirror_run_false_keeps_the_job_pending_until_its_remote_job_ends(fresh_source, target):
    fresh_source.load_plugin(None, "mirror-run=false")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 2; exit 2")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    target.wait_event(rid, "start")
    time.sleep(0.5)
    assert state(fresh_source, jobid) == "DEPEND"
    assert fresh_source.status(jobid) == 2


def test_a_reload_while_the_job_runs_takes_it_up_again(fresh_source, target):
    source = fresh_source
    source.load_plugin()
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 3; echo done; exit 6")
    wait_state(source, jobid, "RUN")
    source.remove_plugin()
    time.sleep(0.5)
    assert state(source, jobid) == "RUN"  # held by our prolog meanwhile
    source.load_plugin()
    assert source.status(jobid) == 6
    out = source.run("job", "attach", jobid, check=False).stdout
    assert out == "done\n"
    assert "while its remote job ran" in source.dmesg()


def test_a_source_restart_while_the_job_runs_gives_it_back_running(request, target):
    """Kept running by the instance (FLUX_DISABLE_JOB_CLEANUP), the local job
    is RUN across the restart (our prolog holds it), comes back with its
    annotation, follows the remote job again and ends with its status and
    output, once."""
    from test_restart import KEEP_RUNNING_JOBS, example_config

    statedir = tempfile.mkdtemp(prefix="delegate-statedir-")
    source = FluxInstance(
        name="restart-running", config=example_config(), statedir=statedir, env=KEEP_RUNNING_JOBS
    )
    request.addfinalizer(source.cleanup)
    source.start()
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "sh", "-c", "echo before; sleep 4; echo after; exit 5"
    )
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    wait_state(source, jobid, "RUN")
    before = annotation(source, jobid)
    assert before["state"] == "running"
    source.stop()
    assert target.run("jobs", "-no", "{state}", rid).stdout.strip() == "RUN"
    source.start()
    assert state(source, jobid) == "RUN"
    deadline = time.time() + 15  # given back once job-list knows the job
    while annotation(source, jobid) != before:
        assert time.time() < deadline, (annotation(source, jobid), source.dmesg()[-3000:])
        time.sleep(0.1)
    assert source.status(jobid, timeout=30) == 5
    assert target.exception(rid) is None
    assert source.run("job", "attach", jobid, check=False).stdout == "before\nafter\n"
    names = [e["name"] for e in source.eventlog(jobid)]
    assert names.count("finish") == 1 and names.count("alloc") == 1


def delegated_to(instance, jobid):
    return [e for e in instance.eventlog(jobid) if e["name"] == "delegated"][-1]["context"]


def test_a_burst_runs_each_local_job_while_its_remote_job_runs(fresh_source, target):
    """Over a burst, each local job ran from about its remote job's alloc
    to about its end (the times 'flux jobs -a' keeps), and ended with its
    own remote job's status."""
    source = fresh_source
    source.load_plugin()
    jobs = [
        source.submit(
            f"--dependency=delegate:{target.uri}", "sh", "-c", f"sleep 0.{i % 5 + 3}; exit {i % 4}"
        )
        for i in range(24)
    ]
    assert [source.status(j, timeout=120) for j in jobs] == [i % 4 for i in range(24)]
    for jobid in jobs:
        here = listing(source, jobid)
        there = listing(target, str(delegated_to(source, jobid)["jobid"]))
        assert abs(here["t_run"] - there["t_run"]) < 1.0, jobid
        assert abs(here["t_cleanup"] - there["t_cleanup"]) < 1.0, jobid
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    assert query["counts"]["started-with-remote"] == 24


def test_a_burst_of_jobs_that_run_for_milliseconds_each_has_its_whole_output(fresh_source, target):
    """A remote job that ends within milliseconds has often cleaned up
    before its output is watched, or is watched while its guest namespace
    is removed (a watch flux-core 0.88's job-info may never answer): its
    output is then read from its KVS directory, whole, at once."""
    source = fresh_source
    source.load_plugin()
    jobs = source.run(
        "submit", "--cc=1-30", f"--dependency=delegate:{target.uri}", "sh", "-c", "echo line{cc}"
    ).stdout.split()
    assert [source.status(j, timeout=120) for j in jobs] == [0] * 30
    for i, jobid in enumerate(jobs, start=1):
        assert source.run("job", "attach", jobid).stdout == f"line{i}\n", jobid
    counts = json.loads(source.run("jobtap", "query", "delegate.so").stdout)["counts"]
    assert counts["output-live"] + counts["output-read-again"] == 30, counts


def test_a_source_shutdown_cancels_a_running_delegated_job_and_its_remote_job(request, target):
    """Flux cancels running jobs at shutdown (its cleanup): a delegated one
    too, and its remote job does not run on alone."""
    from test_restart import example_config

    statedir = tempfile.mkdtemp(prefix="delegate-statedir-")
    source = FluxInstance(name="shutdown-running", config=example_config(), statedir=statedir)
    request.addfinalizer(source.cleanup)
    source.start()
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    wait_state(source, jobid, "RUN")
    source.stop()
    assert target.wait_event(rid, "exception")["context"]["type"] == "cancel"
    source.start()
    assert state(source, jobid) == "INACTIVE"
    assert source.exception(jobid)["type"] == "cancel"


def test_attach_streams_the_output_as_the_remote_job_writes_it(source, target):
    """flux job attach LOCALID, started before the remote job runs, prints
    each line as the remote job writes it (live output), in order, with
    stderr, and exits with the remote exit code; afterwards the output is
    the job's own, once."""
    import subprocess

    from flux_instance import FLUX

    jobid = source.submit(
        f"--dependency=delegate:{target.uri}",
        "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 1; done; echo oops >&2; exit 3",
    )
    proc = subprocess.Popen(
        [FLUX, "job", "attach", jobid], env=source.env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append((line, state(source, jobid)))
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 3
    assert [line for line, _ in seen] == ["line1\n", "line2\n", "line3\n"]
    # The first lines came while the job still ran here (and there).
    assert seen[0][1] == "RUN" and seen[1][1] == "RUN", seen
    assert "oops" in err and "stdin" not in err
    out = source.run("job", "attach", jobid, check=False).stdout
    assert out == "line1\nline2\nline3\n"
    shell = [e for e in source.eventlog(jobid, "guest.exec.eventlog") if e["name"] == "complete"]
    assert [e["context"]["status"] for e in shell] == [768]


def test_attach_refuses_stdin_clearly_and_streams_with_read_only(source, target):
    """stdin is not forwarded to the remote job: 'flux job attach LOCALID'
    given input says so (flux's own message) and exits 1; with --read-only
    it streams the output as always ('flux remote attach' forwards stdin)."""
    import subprocess

    from flux_instance import FLUX

    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 2; echo done")
    source.wait_event(jobid, "start")
    refused = subprocess.run(
        [FLUX, "job", "attach", jobid], env=source.env(), input="hello\n",
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 1 and "stdin not accepted by job" in refused.stderr
    read_only = subprocess.run(
        [FLUX, "job", "attach", "--read-only", jobid], env=source.env(), input="hello\n",
        capture_output=True, text=True, timeout=60,
    )
    assert read_only.returncode == 0 and read_only.stdout == "done\n", read_only


def test_live_output_past_output_limit_keeps_its_beginning_and_its_tail(fresh_source, target):
    source = fresh_source
    source.load_plugin(None, "output-limit=16K", "output-tail=4K")
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "seq 1 20000")
    assert source.status(jobid) == 0
    proc = source.run("job", "attach", jobid, check=False)
    lines = proc.stdout.splitlines()
    # The beginning, in order, as it came; then the last lines, to the end.
    head = [str(i) for i in range(1, len(lines) + 1)]
    cut = next(i for i, (a, b) in enumerate(zip(lines, head)) if a != b)
    assert 100 < cut < 20000 and lines[-1] == "20000"
    tail = lines[cut:]
    assert tail == [str(i) for i in range(int(tail[0]), 20001)]
    assert "output capped" in proc.stderr and "output-tail" in proc.stderr
    assert "bytes of output left out" in proc.stderr
    assert f"flux remote attach {jobid}" in proc.stderr
    size = len(source.run("job", "eventlog", "-p", "guest.output", jobid).stdout)
    assert size < (16 + 4 + 4) * 1024  # the KVS holds no more than asked


def test_live_output_of_printf_directives_is_copied_as_data(fresh_source, target):
    """Remote output full of printf directives ('%n' would write through
    the broker's memory, were it ever a format), past the live limit, under
    a job name of them: copied verbatim, beginning and tail, with the
    notices, and the broker goes on."""
    source = fresh_source
    source.load_plugin(None, "output-limit=8K", "output-tail=2K")
    line = "%n%s%x%p%*d%1000000d"
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", f"--job-name={line}",
        "sh", "-c", f"for i in $(seq 1 2000); do echo \"$i {line}\"; echo \"$i {line}\" >&2; done",
    )
    assert source.status(jobid) == 0
    proc = source.run("job", "attach", jobid, check=False)
    out = proc.stdout.splitlines()
    assert out[0] == f"1 {line}"
    assert all(text.endswith(f" {line}") for text in out)
    err = [text for text in proc.stderr.splitlines() if "flux-shell:" not in text and "flux-job:" not in text]
    assert err[0] == f"1 {line}" and err[-1] == f"2000 {line}", proc.stderr[-2000:]
    assert all(text.endswith(f" {line}") for text in err)
    assert "output capped" in proc.stderr and "output-tail" in proc.stderr
    assert source.run("jobs", "-no", "{name}", jobid).stdout.strip() == line
    assert source.run("getattr", "rank").stdout.strip() == "0"  # the broker is alive


def remote_shell_output_options(source, target, jobid):
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    spec = json.loads(target.run("job", "info", rid, "jobspec").stdout)
    return spec["attributes"]["system"].get("shell", {}).get("options", {}).get("output", {})


def test_the_remote_shell_commits_output_every_output_batch_timeout(fresh_source, target):
    """With live output the remote shell commits its output every 0.1 s
    (output-batch-timeout), not every 0.5 s (its own default), unless the
    job says otherwise; not set without live output."""
    source = fresh_source
    source.load_plugin()
    plain = source.submit(f"--dependency=delegate:{target.uri}", "true")
    own = source.submit(f"--dependency=delegate:{target.uri}", "-o", "output.batch-timeout=0.3", "true")
    assert remote_shell_output_options(source, target, plain) == {"batch-timeout": 0.1}
    assert remote_shell_output_options(source, target, own) == {"batch-timeout": 0.3}
    assert source.status(plain) == 0 and source.status(own) == 0
    source.remove_plugin()
    source.load_plugin(None, "live-output=false")
    unset = source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert remote_shell_output_options(source, target, unset) == {}
    source.remove_plugin()
    source.load_plugin(None, "output-batch-timeout=0.02s")
    short = source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert remote_shell_output_options(source, target, short) == {"batch-timeout": 0.02}
    assert source.status(short) == 0
