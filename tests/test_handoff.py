"""How a job goes on to its target: from job.new when delegation is its
only dependency (early-handoff), from DEPEND otherwise; and the pre-flight's
"feasible" answers kept for a while (preflight-cache).  On real instances;
how much sooner is measured by the benchmark, not here."""

import json

import pytest

pytestmark = pytest.mark.integration


def counts(instance):
    return json.loads(instance.run("jobtap", "query", "delegate.so").stdout)["counts"]


def candidates(instance, jobid):
    return instance.wait_event(jobid, "delegate-choice")["context"]["candidates"]


def test_a_job_with_no_other_dependency_goes_on_from_job_new(fresh_source, target):
    fresh_source.load_plugin()
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0
    # -S system.delegate (no dependency in the jobspec at all) too.
    other = fresh_source.submit(f"--setattr=system.delegate={target.uri}", "true")
    assert fresh_source.status(other) == 0
    assert (counts(fresh_source)["early"], counts(fresh_source)["at-depend"]) == (2, 0)


def test_other_dependencies_and_holds_still_wait_for_depend(fresh_source, target):
    fresh_source.load_plugin()
    first = fresh_source.submit("sleep", "1")
    after = fresh_source.submit(
        f"--dependency=afterok:{first}", f"--dependency=delegate:{target.uri}", "true"
    )
    held = fresh_source.submit(f"--dependency=delegate:{target.uri}", "--urgency=hold", "true")
    fresh_source.wait_event(held, "validate")
    assert counts(fresh_source)["early"] == 0
    finished = fresh_source.wait_event(first, "finish")["timestamp"]
    assert fresh_source.status(after) == 0
    delegated = fresh_source.wait_event(after, "delegated")["timestamp"]
    assert delegated >= finished
    fresh_source.run("job", "urgency", held, "default")
    assert fresh_source.status(held) == 0
    assert (counts(fresh_source)["early"], counts(fresh_source)["at-depend"]) == (0, 2)


def test_early_handoff_can_be_turned_off(fresh_source, target):
    fresh_source.load_plugin(None, "early-handoff=false")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0
    assert (counts(fresh_source)["early"], counts(fresh_source)["at-depend"]) == (0, 1)


def test_a_job_failing_before_it_reaches_depend_fails_cleanly(fresh_source, target):
    # A policy that cannot choose, with the target's answer at hand
    # (preflight-cache), fails the job within a millisecond of job.new,
    # before the job-manager has committed its submit: the exception waits
    # for DEPEND, and the job ends with it.
    fresh_source.load_plugin()
    fresh_source.run(
        "config", "load", input=f'[[delegate]]\nlabel = "t"\nuri = "{target.uri}"\n'
    )
    assert fresh_source.status(fresh_source.submit("--dependency=delegate:t", "true")) == 0
    jobids = [fresh_source.submit("--dependency=delegate:assign:3", "true") for _ in range(5)]
    for jobid in jobids:
        fresh_source.wait_event(jobid, "clean")
        exc = fresh_source.exception(jobid)
        assert exc["type"] == "DelegationFailure" and "out of range" in exc["note"]
    # It did come before DEPEND (the debug line), for one job at least.
    assert "not in DEPEND yet: the end waits for it" in fresh_source.run("dmesg").stdout
    assert counts(fresh_source)["early"] == 6
    assert fresh_source.status(fresh_source.submit("true")) == 0


def test_a_feasible_answer_serves_jobs_of_the_same_shape(fresh_source, target):
    fresh_source.load_plugin()
    first = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(first) == 0
    assert candidates(fresh_source, first)[0]["verdict"] == "feasible"
    assert "reason" not in candidates(fresh_source, first)[0]
    # The same shape (another command): no question asked.
    second = fresh_source.submit(f"--dependency=delegate:{target.uri}", "hostname")
    assert fresh_source.status(second) == 0
    cached = candidates(fresh_source, second)[0]
    assert cached["verdict"] == "feasible" and "(preflight-cache)" in cached["reason"]
    # Another shape (a time limit): asked.
    third = fresh_source.submit(f"--dependency=delegate:{target.uri}", "-t", "5m", "true")
    assert fresh_source.status(third) == 0
    assert "reason" not in candidates(fresh_source, third)[0]
    # "infeasible" is never kept: asked each time, and each time refused.
    for _ in range(2):
        big = fresh_source.submit(f"--dependency=delegate:{target.uri}", "-n", "64", "true")
        fresh_source.wait_event(big, "clean")
        assert candidates(fresh_source, big)[0]["verdict"] == "infeasible"
    assert counts(fresh_source)["feasibility-asked"] == 4
    assert counts(fresh_source)["feasibility-cached"] == 1


def test_preflight_cache_0_asks_every_time(fresh_source, target):
    fresh_source.load_plugin(None, "preflight-cache=0")
    for _ in range(2):
        jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
        assert fresh_source.status(jobid) == 0
        assert "reason" not in candidates(fresh_source, jobid)[0]
    assert counts(fresh_source)["feasibility-asked"] == 2
    assert counts(fresh_source)["feasibility-cached"] == 0
