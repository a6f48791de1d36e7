"""A source instance that restarts neither kills nor forgets remote work.

A delegated job runs here while its remote job runs (mirror-run), and at
shutdown Flux cancels running jobs (its cleanup: flux cancel --states RUN),
these too, and their remote jobs with them.  Started with
FLUX_DISABLE_JOB_CLEANUP, which Flux gives for running jobs to outlive a
restart, the instance keeps them running, and they come back so
(test_running.py).  A pending one, or any with mirror-run=false, is kept
whatever."""

import json
import os
import tempfile

import pytest
from flux_instance import PLUGIN, FluxInstance, plugin_conf_toml

pytestmark = pytest.mark.integration

EXAMPLE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "delegate.toml")


#: What keeps running jobs across a restart (flux-core's rc1: no cleanup).
KEEP_RUNNING_JOBS = {"FLUX_DISABLE_JOB_CLEANUP": "t"}


def example_config(**conf):
    """delegate.toml as shipped, pointed at the plugin and handler under
    test, with the plugin options conf."""
    with open(EXAMPLE_CONFIG) as fp:
        text = fp.read()
    installed = '{ load = "delegate.so" }'
    assert installed in text
    return text.replace(
        installed, f'{{ load = "{PLUGIN}", conf = {plugin_conf_toml(**conf)} }}'
    )


def test_source_restart_during_remote_run_with_the_job_pending_here(request, target):
    """mirror-run=false: the local job stays pending while the remote job
    runs, and a shutdown keeps pending jobs."""
    statedir = tempfile.mkdtemp(prefix="delegate-statedir-")
    source = FluxInstance(
        name="restarting", config=example_config(**{"mirror-run": "false"}), statedir=statedir
    )
    request.addfinalizer(source.cleanup)
    source.start()
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 3; exit 5"
    )
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    target.wait_event(rid, "start")

    # Shut the source down while the remote job runs: the local job is
    # pending (DEPEND), so shutdown does not cancel it, nor the remote one.
    source.stop()
    assert target.run("jobs", "-n", "-o", "{state}", rid).stdout.strip() == "RUN"

    source.start()
    assert source.status(jobid, timeout=30) == 5
    assert target.exception(rid) is None
    assert f"{jobid}: following" in source.dmesg() and " again" in source.dmesg()


def test_a_restart_with_outputs_stored_counts_nothing_allocated_here(request):
    """Jobs whose remote job has finished have their R (naming rank 0 of
    the remote job's nodes) written while still pending: a restart reads R
    back.  They are alloc-bypass from the start, so their R is not counted
    as allocated here (two of them would be a "duplicate allocation" of
    rank 0, and 'flux resource status' would fail), and they end right."""
    from conftest import start_instance
    from flux_instance import PERILOG_CONFIG

    slow = start_instance(
        request, name="slow-epilog-restart",
        config=PERILOG_CONFIG + '[job-manager.epilog]\ncommand = ["sleep", "6"]\n',
    )
    statedir = tempfile.mkdtemp(prefix="delegate-statedir-")
    source = FluxInstance(
        name="restarting-stored", config=example_config(), statedir=statedir, env=KEEP_RUNNING_JOBS
    )
    request.addfinalizer(source.cleanup)
    source.start()
    jobs = [source.submit(f"--dependency=delegate:{slow.uri}", "sh", "-c", f"exit {n}") for n in (2, 3)]
    for jobid in jobs:
        rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
        slow.wait_event(rid, "finish")
    names = [e["name"] for e in source.eventlog(jobs[0])]
    assert names.index("set-flags") < names.index("delegated")
    # R stored before the release, the output and its exec eventlog at the end.
    key = source.run("job", "id", "--to=kvs", jobs[1]).stdout.strip()
    deadline = __import__("time").time() + 5
    while source.run("kvs", "get", f"{key}.R", check=False).returncode != 0:
        assert __import__("time").time() < deadline, "R not stored"
        __import__("time").sleep(0.1)
    source.stop()
    source.start()
    allocated = source.run(
        "python", "-c",
        "import flux, json; print(json.dumps(flux.Flux().rpc('job-manager.resource-status').get()))",
        check=False,
    )
    assert allocated.returncode == 0, allocated.stderr
    R = json.loads(allocated.stdout)["allocated"] or {}
    assert not R.get("execution", {}).get("R_lite"), allocated.stdout
    assert [source.status(j, timeout=60) for j in jobs] == [2, 3]
