"""A delegated job as flux's own tools show it in the source instance:
'flux job attach LOCALID' prints the remote job's output and exits with its
exit code; 'flux jobs' names the remote nodes."""

import json
import subprocess

import pytest
from conftest import start_instance
from flux_instance import FLUX, PERILOG_CONFIG, FluxInstance

pytestmark = pytest.mark.integration

#: The target's resources, under hostnames of its own (not this host's).
NAMED_TARGET_CONFIG = """
[resource]
noverify = true
[[resource.config]]
hosts = "remote[0-1]"
cores = "0-1"
"""

@pytest.fixture(scope="module")
def named_target(request):
    """A target of two brokers whose nodes are remote0 and remote1."""
    instance = FluxInstance(
        size=2, hosts="remote[0-1]", config=NAMED_TARGET_CONFIG, name="named-target"
    ).start()
    request.addfinalizer(instance.cleanup)
    return instance


def attach(instance, jobid, *options):
    """'flux job attach' of a job: (stdout, stderr, exit code)."""
    proc = instance.run("job", "attach", *options, jobid, check=False)
    return proc.stdout, proc.stderr, proc.returncode


def test_attach_prints_the_remote_output_and_exit_code(source, target):
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}",
        "sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3",
    )
    assert source.status(jobid) == 3
    out, err, code = attach(source, jobid)
    assert out == "out1\nout2\n"
    assert "err1\nerr2\n" in err  # after flux's own line: exit code 3
    assert "No job output found" not in err
    assert code == 3
    # The output is the local job's own, kept with it (guest.output).
    names = [e["name"] for e in source.eventlog(jobid, "guest.output")]
    assert names[0] == "header" and names.count("data") >= 4


def test_attach_to_a_running_delegated_job_waits_for_its_output(source, target):
    """Attached while the remote job runs: the local job runs too (RUN), and
    attach prints the output once it ends."""
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}",
        "sh", "-c", "sleep 2; echo late; echo later >&2; exit 4",
    )
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    target.wait_event(rid, "start")
    state = source.run("jobs", "-no", "{state}", jobid).stdout.strip()
    assert state == "RUN"
    proc = subprocess.run(
        [FLUX, "job", "attach", jobid],
        env=source.env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout == "late\n"
    assert "later\n" in proc.stderr
    assert proc.returncode == 4


def test_a_job_with_no_output_has_none(source, target):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert source.status(jobid) == 0
    out, err, code = attach(source, jobid)
    assert (out, code) == ("", 0)
    assert "flux remote attach" not in err


def test_output_redirected_on_the_target_is_said_so(source, target, tmp_path):
    path = tmp_path / "out.txt"
    jobid = source.submit(f"--dependency=delegate:{target.uri}", f"--output={path}", "echo", "hi")
    assert source.status(jobid) == 0
    out, err, code = attach(source, jobid)
    assert (out, code) == ("", 0)
    assert f"stdout redirected to {path}" in err  # a path on the target
    assert path.read_text() == "hi\n"  # (the same host here)


def test_output_beyond_output_limit_is_capped_with_a_notice(fresh_source, target):
    source = fresh_source
    source.load_plugin(None, "output-limit=16K", "live-output=false")  # copied at the end
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "sh", "-c", "echo begin >&2; seq 1 20000"
    )
    assert source.status(jobid) == 0
    out, err, code = attach(source, jobid)
    assert code == 0
    lines = out.splitlines()
    # The beginning, whole lines in order; nothing past the cap.
    assert 1000 < len(lines) < 20000
    assert lines == [str(i) for i in range(1, len(lines) + 1)]
    assert len(out) <= 16 * 1024
    assert "output capped" in err and "output-limit" in err
    assert f"flux remote attach {jobid}" in err
    # Nothing more than the cap (and a little framing) in the KVS.
    size = len(source.run("job", "eventlog", "-p", "guest.output", jobid).stdout)
    assert size < 24 * 1024
    assert json.loads(source.run("jobtap", "query", "delegate.so").stdout)["output-limit"] == 16384

    # With output-limit=0 nothing is copied, and the output says so.
    source.remove_plugin()
    source.load_plugin(None, "output-limit=0")
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "echo hi; exit 2")
    assert source.status(jobid) == 2
    out, err, code = attach(source, jobid)
    assert (out, code) == ("", 2)
    assert "not copied" in err and f"flux remote attach {jobid}" in err


def test_bad_output_limit_is_named_and_jobs_are_rejected(fresh_source, target):
    fresh_source.load_plugin(None, "output-limit=lots")
    proc = fresh_source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert "plugin option output-limit=lots: not a size" in proc.stderr


def test_flux_jobs_shows_the_remote_nodes(source, named_target):
    jobid = source.submit(f"--dependency=delegate:{named_target.uri}", "-N2", "hostname")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    assert source.status(jobid) == 0
    row = source.run("jobs", "-no", "{nodelist} {nnodes} {ncores}", jobid).stdout.split()
    remote = named_target.run("jobs", "-no", "{nodelist} {nnodes} {ncores}", rid).stdout.split()
    assert row == remote
    assert row[:2] == ["remote[0-1]", "2"]
    R = json.loads(source.run("job", "info", jobid, "R").stdout)
    assert R["execution"]["nodelist"] == ["remote[0-1]"]
    # Its ranks are 0 and 1 of the remote job's two nodes, not the target's.
    assert source.run("jobs", "-no", "{ranks}", jobid).stdout.strip() == "[0-1]"
    # No local resource was allocated for it (alloc-bypass).
    assert source.wait_event(jobid, "alloc")["context"] == {"bypass": True}
    assert source.run("resource", "list", "-no", "{nnodes}", "-s", "allocated").stdout.strip() in ("", "0")


def test_one_node_named_where_a_prolog_runs_on_each_rank(request, named_target):
    """With a per-rank job prolog here, a job's ranks are where it runs: a
    released job names its remote node on rank 0 (where its prolog always
    ran), and a job that ran on more nodes names this host, as before."""
    source = start_instance(
        request,
        name="prolog-source",
        config=PERILOG_CONFIG + '[job-manager.prolog]\ncommand = ["true"]\nper-rank = true\n',
    )
    source.load_plugin()
    one = source.submit(f"--dependency=delegate:{named_target.uri}", "-N1", "true")
    two = source.submit(f"--dependency=delegate:{named_target.uri}", "-N2", "true")
    assert source.status(one) == 0 and source.status(two) == 0
    nodelist, ranks = source.run("jobs", "-no", "{nodelist} {ranks}", one).stdout.split()
    assert nodelist in ("remote0", "remote1") and ranks == "0"
    here = source.run("jobs", "-no", "{nodelist} {nnodes}", two).stdout.split()
    assert here[1] == "1" and not here[0].startswith("remote")
    assert "per-rank job prolog or epilog" in source.dmesg()
    prolog = [e for e in source.eventlog(one) if e["name"] == "prolog-finish"]
    assert prolog and prolog[0]["context"]["status"] == 0


def test_no_job_is_submitted_with_the_release_attribute(source):
    proc = source.run("submit", "-S", "delegate-release.wait_status=0", "true", check=False)
    assert proc.returncode != 0
    assert "delegate-release" in proc.stderr


def names(instance, jobid):
    return [e["name"] for e in instance.eventlog(jobid)]


def test_a_released_job_is_run_by_the_plugin_without_job_exec(request, target):
    """The plugin posts the released job's run itself: no job-exec (none is
    loaded here); its guest namespace, output, exit code and exec eventlog
    are its own all the same (liveoutput.py)."""
    source = start_instance(request, name="no-job-exec")
    source.run("module", "remove", "job-exec")
    source.load_plugin()
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "echo ran; exit 3")
    assert source.status(jobid) == 3
    events = source.eventlog(jobid)
    run = [e["name"] for e in events if e["timestamp"] >= source.wait_event(jobid, "alloc")["timestamp"]]
    assert run == ["alloc", "prolog-start", "start", "finish", "release", "prolog-finish", "free", "clean"]
    byname = {e["name"]: e.get("context", {}) for e in events}
    assert byname["prolog-start"] == {"description": "delegate"}
    assert byname["finish"] == {"status": 768}
    assert byname["release"] == {"ranks": "all", "final": True}
    assert source.exception(jobid) is None
    out, err, code = attach(source, jobid)
    assert (out, code) == ("ran\n", 3)
    exec_events = [e["name"] for e in source.eventlog(jobid, "guest.exec.eventlog")]
    assert exec_events == ["init", "starting", "shell.init", "complete", "done"]
    assert source.run("jobs", "-no", "{result} {returncode}", jobid).stdout.split() == ["FAILED", "3"]


def prolog_source(request, name, command):
    source = start_instance(
        request,
        name=name,
        config=PERILOG_CONFIG + f'[job-manager.prolog]\ncommand = {json.dumps(command)}\n',
    )
    source.load_plugin()
    return source


def test_a_site_prolog_is_waited_for_before_the_released_job_ends(request, target):
    source = prolog_source(request, "prolog-waited", ["sleep", "1"])
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "echo out; exit 2")
    assert source.status(jobid) == 2
    events = source.eventlog(jobid)
    prologs = [(e["name"], e["context"]["description"]) for e in events if e["name"].startswith("prolog-")]
    assert ("prolog-start", "delegate") in prologs
    site = [d for n, d in prologs if d != "delegate"]
    assert site, prologs
    order = [e["name"] for e in events]
    site_finish = max(i for i, e in enumerate(events) if e["name"] == "prolog-finish" and e["context"]["description"] != "delegate")
    assert order.index("start") > site_finish
    assert events[site_finish]["context"]["status"] == 0
    out, err, code = attach(source, jobid)
    assert (out, code) == ("out\n", 2)


def test_a_failing_site_prolog_ends_the_released_job_clean(request, target):
    source = prolog_source(request, "prolog-fails", ["false"])
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    source.wait_event(jobid, "clean")
    assert source.exception(jobid) is not None
    assert "start" not in names(source, jobid)
    # Our prolog was closed: nothing holds the job, and the next job goes on.
    closing = [e for e in source.eventlog(jobid) if e["name"] == "prolog-finish"]
    assert any(e["context"]["description"] == "delegate" for e in closing)


def test_a_released_job_held_by_a_prolog_is_run_by_the_next_load(request, target):
    source = prolog_source(request, "prolog-reload", ["sleep", "4"])
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "echo kept; exit 5")
    source.wait_event(jobid, "alloc")
    source.remove_plugin()
    assert source.run("jobs", "-no", "{state}", jobid).stdout.strip() == "RUN"
    source.load_plugin()
    assert source.status(jobid) == 5
    assert "its run taken up again" in source.dmesg()
    out, err, code = attach(source, jobid)
    assert (out, code) == ("kept\n", 5)
    assert names(source, jobid).count("start") == 1

    # Unloaded until the job ended otherwise (canceled while held): the
    # next load closes its prolog, and the job is clean.
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    source.wait_event(jobid, "alloc")
    source.remove_plugin()
    source.run("cancel", jobid)
    source.load_plugin()
    source.wait_event(jobid, "clean")
    assert "start" not in names(source, jobid)


@pytest.fixture(scope="module")
def hold_priority_plugin(tmp_path_factory):
    """tests/jobtap/hold_priority.c, built here: jobs wait in PRIORITY until
    released (as under a priority plugin that takes its time)."""
    import os
    import shutil

    source = os.path.join(os.path.dirname(__file__), "jobtap", "hold_priority.c")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build tests/jobtap/hold_priority.c")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "flux-core"], capture_output=True, text=True, check=True
    ).stdout.split()
    built = str(tmp_path_factory.mktemp("jobtap") / "hold_priority.so")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", built, source, *flags], check=True)
    return built


def release_priority(instance, jobid):
    instance.run(
        "python", "-c",
        "import flux, sys; flux.Flux().rpc('job-manager.hold-priority.release',"
        " {'id': int(sys.argv[1])}).get()",
        str(instance.run("job", "id", jobid).stdout.strip()),
    )


def test_a_released_job_held_before_its_alloc_is_run_by_the_next_load(
    request, named_target, hold_priority_plugin
):
    """Released (its dependency removed), then held in PRIORITY by a
    priority plugin while the plugin is reloaded: the next load gives it
    its R (read back: the remote node's name) once it reaches SCHED, and
    runs it."""
    source = start_instance(request, name="priority-held")
    source.run("jobtap", "load", hold_priority_plugin)
    source.load_plugin()
    jobid = source.submit(f"--dependency=delegate:{named_target.uri}", "sh", "-c", "echo held; exit 4")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    source.wait_event(jobid, "dependency-remove")
    assert source.run("jobs", "-no", "{state}", jobid).stdout.strip() == "PRIORITY"
    source.remove_plugin()
    source.load_plugin()
    release_priority(source, jobid)
    assert source.status(jobid) == 4
    assert "released, not yet allocated: its run taken up again" in source.dmesg()
    out, err, code = attach(source, jobid)
    assert (out, code) == ("held\n", 4)
    remote = named_target.run("jobs", "-no", "{nodelist}", rid).stdout.strip()
    assert remote.startswith("remote")
    assert source.run("jobs", "-no", "{nodelist}", jobid).stdout.strip() == remote

    # Reaching SCHED while no plugin was loaded (nothing gave it R or its
    # alloc): the next load runs it, after job.create (not inside it).
    jobid = source.submit(f"--dependency=delegate:{named_target.uri}", "sh", "-c", "echo late; exit 6")
    source.wait_event(jobid, "dependency-remove")
    source.remove_plugin()
    release_priority(source, jobid)
    source.wait_event(jobid, "priority")
    assert source.run("jobs", "-no", "{state}", jobid).stdout.strip() == "SCHED"
    source.load_plugin()
    assert source.status(jobid) == 6
    out, err, code = attach(source, jobid)
    assert (out, code) == ("late\n", 6)


def annotation(instance, jobid):
    """The job's annotation user.delegate, as flux jobs has it."""
    listing = json.loads(instance.run("jobs", "-a", "--json", jobid).stdout)
    return listing.get("annotations", {}).get("user", {}).get("delegate")


def test_flux_jobs_shows_where_a_delegated_job_runs(source, named_target, tmp_path):
    """The annotation user.delegate follows the remote job (pending, then
    running on its nodes, then ended), and the shipped named format
    (flux jobs -o delegate) shows it."""
    import os
    import time

    jobid = source.submit(f"--dependency=delegate:{named_target.uri}", "-N2", "sleep", "4")
    rid = source.wait_event(jobid, "delegated")["context"]["jobid"]
    named_target.wait_event(str(rid), "start")
    deadline = time.time() + 15
    while (annotation(source, jobid) or {}).get("state") != "running":
        assert time.time() < deadline, annotation(source, jobid)
        time.sleep(0.2)
    remote = named_target.run("job", "id", "--to=f58", str(rid)).stdout.strip()
    assert annotation(source, jobid) == {
        "target": named_target.uri,
        "uri": named_target.uri,
        "jobid": remote,
        "state": "running",
        "nodelist": "remote[0-1]",
    }
    config = tmp_path / "flux"
    config.mkdir()
    shipped = os.path.join(os.path.dirname(__file__), "..", "etc", "flux-jobs.delegate.toml")
    (config / "flux-jobs.delegate.toml").write_text(open(shipped).read())
    env = {"XDG_CONFIG_DIRS": str(tmp_path)}
    row = source.run("jobs", "-n", "-o", "delegate", jobid, env=env).stdout.split()
    assert row[0] == source.run("job", "id", "--to=f58", jobid).stdout.strip(), row
    assert {remote, "running", "remote[0-1]"} <= set(row), row
    assert source.status(jobid) == 0
    assert annotation(source, jobid)["state"] == "ended"
    assert source.run("jobs", "-no", "{nodelist}", jobid).stdout.strip() == "remote[0-1]"


def test_annotate_false_posts_no_remote_state(fresh_source, target):
    """annotate=false: no jobspec-update while the job is pending; the
    annotation comes with the release (job.state.sched), for nothing."""
    fresh_source.load_plugin(None, "annotate=false")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0
    names = [e["name"] for e in fresh_source.eventlog(jobid)]
    updates = [e for e in fresh_source.eventlog(jobid) if e["name"] == "jobspec-update"]
    assert not any("attributes.system.delegate-remote" in e["context"] for e in updates), names
    assert annotation(fresh_source, jobid)["state"] == "ended"
