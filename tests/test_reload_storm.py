"""Reloading the plugin again and again while jobs are delegated: every job
ends with its remote outcome, and none runs twice.  Reloads land in every
window: before a submit, while it is in flight, while the remote job runs,
while the local job is released."""

import time

import pytest

pytestmark = pytest.mark.integration

OPTIONS = ("submit-timeout=2", "reconnect-interval=0.2")


def test_reload_storm_loses_no_job_and_runs_none_twice(fresh_source, target):
    fresh_source.load_plugin(None, *OPTIONS)
    before = len(target.run("jobs", "-a", "-n", "-o", "{id}").stdout.split())
    jobs = {}
    for i in range(24):
        code = i % 4
        jobid = fresh_source.submit(
            f"--dependency=delegate:{target.uri}", "sh", "-c", f"sleep 0.{i % 5}; exit {code}"
        )
        jobs[jobid] = code
        if i % 2:
            fresh_source.remove_plugin()
            time.sleep(0.02 * (i % 3))
            fresh_source.load_plugin(None, *OPTIONS)
    # And more while they run and end, until none is left (or 45 s).
    deadline = time.time() + 45
    while fresh_source.run("jobs", "-n", "-o", "{id}").stdout.strip():
        if time.time() > deadline:
            break
        fresh_source.remove_plugin()
        fresh_source.load_plugin(None, *OPTIONS)

    for jobid, code in jobs.items():
        status = fresh_source.status(jobid, timeout=60)
        assert status == code, fresh_source.run("job", "eventlog", jobid).stdout
    after = len(target.run("jobs", "-a", "-n", "-o", "{id}").stdout.split())
    assert after - before == len(jobs)
