"""'flux remote submit', 'jobs' and 'attach' on real instances.

The source has the plugin loaded, with a registry file of the test's
(registry=PATH) naming two targets: near (the conftest 'target') and far
(an instance of this module's).  The command runs from the source tree,
as in test_remote_cli.py.
"""

import json
import os
import subprocess
import threading
import time

import pytest
from conftest import start_instance
from flux_instance import FLUX, command_env

pytestmark = pytest.mark.integration


#: A job that prints a line a second for five seconds, then exits 4.
SLOW = ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; echo err $i >&2; sleep 1; done; exit 4"]


@pytest.fixture(scope="module")
def site(request, target, tmp_path_factory):
    far = start_instance(request, name="far")
    registry = tmp_path_factory.mktemp("registry") / "delegate.yaml"
    registry.write_text(
        f"delegate:\n- label: near\n  uri: {target.uri}\n- label: far\n  uri: {far.uri}\n"
    )
    source = start_instance(request, name="jobs-src")
    source.load_plugin(None, f"registry={registry}")
    source.near, source.far = target, far
    home = tmp_path_factory.mktemp("home")
    source.cmd_env = command_env(home)
    return source


def command(site, *args):
    """argv and environment of 'flux remote ARGS' against site."""
    env = dict(os.environ, FLUX_URI=site.uri, **site.cmd_env)
    return [FLUX, "remote", *args], env


def remote(site, *args, check=False, timeout=120):
    return site.run("remote", *args, check=check, env=site.cmd_env, timeout=timeout)


def job_count(instance):
    return len(instance.jobs())


def delegated(site, jobid):
    return site.wait_event(jobid, "delegated")["context"]


def lines_with_times(proc, stream):
    """Read stream (a pipe of proc) line by line on a thread: [(time, line)]."""
    found = []

    def read():
        for line in stream:
            found.append((time.monotonic(), line.rstrip("\n")))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return found, thread


# -- help and usage ------------------------------------------------------------


def test_help_of_the_new_subcommands(site):
    out = remote(site, "--help", check=True).stdout
    for name in ("submit", "jobs", "attach"):
        assert f"    {name} " in out
    proc = remote(site, "submit", "--help", check=True)
    assert proc.stdout.startswith("usage: flux remote submit"), proc.stdout
    for option in ("--nodes", "--time-limit", "--setattr", "--cc", "--to", "--wait", "--watch"):
        assert option in proc.stdout
    for name in ("jobs", "attach"):
        proc = remote(site, name, "--help", check=True)
        assert proc.stdout.startswith(f"usage: flux-remote {name}"), proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("submit",),
        ("submit", "--bogus", "true"),
        ("submit", "-N", "x", "true"),
        ("submit", "--timeout=0", "true"),
        ("submit", "--to=far", "--dependency=delegate:near", "true"),
        ("jobs", "--bogus"),
        ("jobs", "--filter=bogus"),
        ("jobs", "--timeout=-1"),
        ("jobs", "notanid"),
        ("attach",),
        ("attach", "notanid"),
        ("attach", "ƒ2", "ƒ3"),
    ],
)
def test_bad_options_exit_2(site, args):
    before = job_count(site)
    proc = remote(site, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "usage:" in proc.stderr
    assert job_count(site) == before


# -- submit --------------------------------------------------------------------


def test_submit_nothing_can_run_it(site):
    """No target can: exit 1 at once, each target's reason on stderr, and no
    job anywhere."""
    counts = [job_count(i) for i in (site, site.near, site.far)]
    start = time.monotonic()
    proc = remote(site, "submit", "-N", "99", "hostname")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert time.monotonic() - start < 30
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == "flux-remote: ERROR: no target can run this job; nothing was submitted:"
    assert f"  near ({site.near.uri}): infeasible: " in proc.stderr
    assert f"  far ({site.far.uri}): infeasible: " in proc.stderr
    # One target named: its reason.
    proc = remote(site, "submit", "--to", "near", "-n", "99", "hostname")
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"  near ({site.near.uri}): infeasible: " in proc.stderr
    # A target the plugin would reject at submit.
    proc = remote(site, "submit", "--to", "nosuch", "hostname")
    assert proc.returncode == 1 and "registry label or policy" in proc.stderr
    assert proc.stderr.startswith("flux-remote: ")
    # Nothing was created, here or there.
    assert [job_count(i) for i in (site, site.near, site.far)] == counts


def test_submit_prints_the_local_id_of_a_delegated_job(site):
    proc = remote(site, "submit", "--to", "far", "--job-name=plain", "true", check=True)
    jobid = proc.stdout.strip()
    context = delegated(site, jobid)
    assert (context["label"], context["uri"]) == ("far", site.far.uri)
    assert site.status(jobid) == 0
    # flux submit's own options reached the jobspec.
    assert "plain" in [j["name"] for j in site.far.jobs()]
    # The default policy, when neither --to nor a dependency names one.
    jobid = remote(site, "submit", "true", check=True).stdout.strip()
    assert delegated(site, jobid)["label"] in ("near", "far")
    assert site.status(jobid) == 0


def test_submit_wait_exits_with_the_remote_exit_code(site):
    proc = remote(site, "submit", "--wait", "--to", "near", "sh", "-c", "exit 3")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    jobid = proc.stdout.strip()
    remote_id = delegated(site, jobid)["jobid"]
    assert remote_id in [j["id"] for j in site.near.jobs() if j.get("returncode") == 3]
    proc = remote(site, "submit", "--wait", "true")
    assert proc.returncode == 0, proc.stderr


def test_submit_watch_streams_the_output_and_exits_with_its_code(site):
    proc = remote(
        site, "submit", "--watch", "--to", "far", "sh", "-c", "echo out; echo err >&2; exit 6"
    )
    assert proc.returncode == 6, (proc.stdout, proc.stderr)
    jobid, out = proc.stdout.splitlines()
    assert out == "out"
    assert "err\n" in proc.stderr
    assert "flux-remote: task(s) exited with exit code 6" in proc.stderr
    assert delegated(site, jobid)["label"] == "far"


# -- attach --------------------------------------------------------------------


def test_attach_streams_output_while_the_job_runs(site):
    jobid = remote(site, "submit", "--to", "near", *SLOW, check=True).stdout.strip()
    argv, env = command(site, "attach", jobid)
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, reader = lines_with_times(proc, proc.stdout)
    err = proc.stderr.read()
    proc.wait(timeout=60)
    reader.join(10)
    ended = time.monotonic()
    assert proc.returncode == 4, err
    assert [line for _, line in out] == [f"line {i}" for i in range(1, 6)]
    # The first line came while the job still ran (it prints for 5s).
    assert ended - out[0][0] > 2.5, (out, ended)
    assert [f"err {i}" for i in range(1, 6)] == [x for x in err.splitlines() if x.startswith("err")]
    assert err.splitlines()[-1] == "flux-remote: task(s) exited with exit code 4"
    # Attached again once it ended: the whole output, the same code.
    again = remote(site, "attach", jobid)
    assert again.returncode == 4
    assert again.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]


def test_attach_waits_for_the_delegation(site):
    jobid = remote(
        site,
        "submit",
        "--urgency=hold",
        "--to",
        "far",
        "sh",
        "-c",
        "echo there; exit 2",
        check=True,
    ).stdout.strip()
    argv, env = command(site, "attach", jobid)
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    errors, reader = lines_with_times(proc, proc.stderr)
    deadline = time.monotonic() + 30
    while not errors and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (
        errors
        and errors[0][1] == f"flux-remote: {jobid} is not delegated yet: waiting for it to be"
    )
    assert proc.poll() is None
    site.run("job", "urgency", jobid, "default")
    out = proc.stdout.read()
    proc.wait(timeout=60)
    reader.join(10)
    assert proc.returncode == 2
    assert out == "there\n"
    shown = [line for _, line in errors]
    assert any(line.startswith(f"flux-remote: {jobid} runs on far ") for line in shown), shown


def test_attach_follows_the_job_to_its_next_target(site):
    """near cannot allocate the job after all: the plugin fails it over to
    far, and attach follows it there."""
    blocker = site.near.submit("-N1", "-x", "sleep", "300")
    site.near.wait_event(blocker, "start")
    try:
        jobid = remote(site, "submit", "sh", "-c", "echo on the next one; exit 7", check=True)
        jobid = jobid.stdout.strip()
        first = delegated(site, jobid)
        assert first["label"] == "near"  # least_pending: a tie keeps registry order
        argv, env = command(site, "attach", jobid)
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(1)
        site.near.run("job", "raise", "--type=alloc", str(first["jobid"]), "no room after all")
        out, err = proc.communicate(timeout=60)
    finally:
        site.near.run("cancel", blocker)
    assert proc.returncode == 7, err
    assert out == "on the next one\n"
    lines = err.splitlines()
    assert lines[0] == "job.exception: type=alloc severity=0 no room after all"
    assert lines[1].startswith(f"flux-remote: {jobid}: near: remote job ")
    assert lines[1].endswith("alloc exception: no room after all; trying far")
    assert lines[2].startswith(f"flux-remote: {jobid} runs on far ")
    assert lines[-1] == "flux-remote: task(s) exited with exit code 7"
    row = jobs_json(site, "-a", jobid)[jobid]
    assert row["label"] == "far" and len(row["failovers"]) == 1 and row["exitcode"] == 7


def test_attach_to_a_job_that_failed_before_delegation(site, tmp_path):
    gone = f"local://{tmp_path}/local-0"
    jobid = site.submit(f"--dependency=delegate:{gone}", "true")
    note = site.wait_event(jobid, "exception")["context"]["note"]
    proc = remote(site, "attach", jobid)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"flux-remote: {jobid}: DelegationFailure: {note}\n"


def test_attach_refuses_what_it_cannot_follow(site):
    jobid = site.submit("true")
    proc = remote(site, "attach", jobid)
    assert proc.returncode == 1 and "is not a delegated job" in proc.stderr
    proc = remote(site, "attach", "ƒ2")
    assert proc.returncode == 1 and "no such job" in proc.stderr


# -- jobs ----------------------------------------------------------------------


def jobs_json(site, *args):
    proc = remote(site, "jobs", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return {row["jobid"]: row for row in json.loads(proc.stdout)["jobs"]}


def test_jobs_json_names_the_remote_jobs(site):
    ran = {}
    for label, code in (("near", 0), ("far", 5)):
        proc = remote(site, "submit", "--wait", "--to", label, "sh", "-c", f"exit {code}")
        assert proc.returncode == code
        ran[proc.stdout.strip()] = (label, code)
    running = remote(site, "submit", "--to", "far", "sleep", "300", check=True).stdout.strip()
    plain = site.submit("true")
    site.wait_event(plain, "clean")
    try:
        there = delegated(site, running)
        site.far.wait_event(str(there["jobid"]), "start")
        rows = jobs_json(site, "-a")
        assert plain not in rows  # not delegated
        for jobid, (label, code) in ran.items():
            row = rows[jobid]
            context = delegated(site, jobid)
            assert row["remote_id"] == context["jobid"]
            assert (row["label"], row["uri"]) == (label, context["uri"])
            assert row["target_state"] == "up"
            assert row["remote"]["id"] == context["jobid"]
            assert row["remote"]["state"] == "INACTIVE"
            assert (row["exitcode"], row["remote"]["returncode"]) == (code, code)
            assert row["result"] == ("COMPLETED" if code == 0 else "FAILED")
        row = rows[running]
        assert row["remote_id"] == there["jobid"] and row["status"] == "RUN"  # as it runs there
        assert row["remote"]["state"] == "RUN" and row["exitcode"] is None
        # Filters apply where the job runs (here it runs too, or, with
        # mirror-run=false, is pending).
        assert list(jobs_json(site, "-f", "running")) == [running]
        assert running not in jobs_json(site, "-f", "inactive")
        assert set(jobs_json(site)) >= {running}  # default: pending and running
        # The table shows the same remote ids.
        table = remote(site, "jobs", "-a", check=True).stdout.splitlines()
        assert table[0].split()[:4] == ["JOBID", "NAME", "TARGET", "REMOTEID"]
        shown = {line.split()[0]: line.split() for line in table[1:]}
        for jobid in list(ran) + [running]:
            context = delegated(site, jobid)
            assert shown[jobid][2] == context["label"]
            assert (
                shown[jobid][3]
                == site.run("job", "id", "--to=f58", str(context["jobid"])).stdout.strip()
            )
        ids = remote(site, "jobs", "-o", "ids", "-n", running, check=True).stdout.split()
        assert ids[1:] == ["far", shown[running][3], site.far.uri]
    finally:
        site.run("cancel", running)


def test_jobs_lists_a_job_whose_target_is_gone(request, site):
    lost = start_instance(request, name="lost")
    jobid = remote(site, "submit", "--to", lost.uri, "sleep", "300", check=True).stdout.strip()
    try:
        context = delegated(site, jobid)
        lost.wait_event(str(context["jobid"]), "start")
        lost.kill()
        start = time.monotonic()
        row = jobs_json(site, "--timeout=2")[jobid]
        assert time.monotonic() - start < 15
        assert row["remote_id"] == context["jobid"] and row["uri"] == lost.uri
        assert row["target_state"] == "unreachable" and row["remote"] is None
        assert row["note"].startswith("unreachable: ")
        # The others are still shown as their targets say.
        others = [r for j, r in jobs_json(site, "-a", "--timeout=2").items() if j != jobid]
        sent = [r for r in others if r["remote_id"] is not None]
        assert sent and all(r["target_state"] == "up" and r["remote"] for r in sent)
    finally:
        site.run("cancel", jobid)


def test_jobs_shows_a_failure_before_delegation(site, tmp_path):
    jobid = site.submit(f"--dependency=delegate:local://{tmp_path}/local-0", "true")
    site.wait_event(jobid, "clean")
    row = jobs_json(site, "-a")[jobid]
    assert row["remote_id"] is None and row["remote"] is None
    assert row["note"].startswith("delegate: ") and row["exitcode"] == 1
