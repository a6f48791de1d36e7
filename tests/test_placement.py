"""Placement on real instances: earliest_start's estimates from each
target's plan, jobs just sent counted in at once, a target that cannot
tell, and the source as a candidate (include-local).

Targets are instances of their own with made-up resources ([resource]
noverify), jobs run by flux's test execution (system.exec.test), so that
no real cores are needed.
"""

import json
import subprocess
import time

import pytest
from conftest import start_instance
from flux_instance import FLUX

pytestmark = pytest.mark.integration

#: A job run for "run" by flux's test execution, on no real core.
def job_args(cores, limit, run="3600s", *extra):
    return ["-N1", f"-n{cores}", f"-t{limit}", "-S", f"system.exec.test.run_duration={run}", *extra, "true"]


def resource_config(tmp_path, name, cores):
    """Broker config: 'cores' made-up cores on one rank, not verified."""
    path = tmp_path / f"{name}.R"
    R = subprocess.run(
        [FLUX, "R", "encode", "-r", "0", "-c", f"0-{cores - 1}", "-H", f"{name}0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path.write_text(R)
    return f'[resource]\npath = "{path}"\nnoverify = true\n'


@pytest.fixture(scope="module")
def clusters(request, tmp_path_factory):
    """A source of 4 made-up cores and three targets: a 8, b 8, c 16."""
    tmp = tmp_path_factory.mktemp("placement")
    targets = {}
    for name, cores in (("a", 8), ("b", 8), ("c", 16)):
        targets[name] = start_instance(
            request, name=f"target-{name}", config=resource_config(tmp, name, cores)
        )
    source_resources = resource_config(tmp, "home", 4)
    source = start_instance(request, name="placement-source", config=source_resources)
    source.load_plugin()
    source.targets = targets
    source.resources = source_resources
    return source


def configure(source, labels, **policy):
    toml = source.resources
    for label in labels:
        toml += f'\n[[delegate]]\nlabel = "{label}"\nuri = "{source.targets[label].uri}"\n'
    if policy:
        toml += "\n[delegate-policy]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in policy.items()
        )
    source.run("config", "load", input=toml)


def choice(source, jobid):
    return source.wait_event(jobid, "delegate-choice")["context"]


def estimates(context):
    return {c.get("label"): c.get("estimate") for c in context["candidates"]}


def schedules(source):
    """The plugin's schedules (jobtap query): {uri: {reads, age, ...}}."""
    return json.loads(source.run("jobtap", "query", "delegate.so").stdout)["schedules"]


def cancel_all(*instances):
    for instance in instances:
        instance.run("cancel", "--all", "-q", check=False)
    for instance in instances:
        instance.run("job", "wait", "--all", check=False, timeout=60)


@pytest.fixture
def clean(clusters):
    yield clusters
    cancel_all(clusters, *clusters.targets.values())
    time.sleep(2.1)  # the plans read (estimate-cache) are read again


def test_earliest_start_goes_where_the_job_starts_now(clean):
    source = clean
    a = source.targets["a"]
    configure(source, ["a", "c"])
    busy = a.submit(*job_args(8, "1h"))
    a.wait_event(busy, "alloc")
    jobid = source.submit("--dependency=delegate:earliest_start", *job_args(4, "10m", "0.1s"))
    context = choice(source, jobid)
    assert context["choice"] == "c" and context["policy"] == "earliest_start"
    seen = estimates(context)
    # a's cores are held until its job's limit (1h): about 3600s from now.
    assert 3500 < seen["a"] <= 3600 and seen["c"] == 0
    assert all("fcfs plan" in c["basis"] for c in context["candidates"])
    assert source.status(jobid) == 0


def test_ties_go_to_the_target_left_with_fewer_idle_cores(clean):
    source = clean
    configure(source, ["c", "a"])
    jobid = source.submit("--dependency=delegate:earliest_start", *job_args(6, "10m", "0.1s"))
    context = choice(source, jobid)
    assert estimates(context) == {"c": 0, "a": 0}
    assert context["choice"] == "a"  # 2 cores left idle there, not 10
    assert source.status(jobid) == 0


def test_jobs_just_sent_are_counted_in_at_once(clean):
    """Four 8-core jobs at once to two idle 8-core targets: each target
    gets two, the second of each planned after the first, from one read
    of each target."""
    source = clean
    configure(source, ["a", "b"])
    before = schedules(source)
    jobs = source.submit(
        "--cc=1-4", "--dependency=delegate:earliest_start", *job_args(8, "10m")
    ).split()
    chosen = [choice(source, j) for j in jobs]
    where = [c["choice"] for c in chosen]
    assert sorted(where) == ["a", "a", "b", "b"], where
    later = sorted(min(e for e in estimates(c).values()) for c in chosen)
    assert later[:2] == [0, 0] and all(590 < s <= 600 for s in later[2:]), later
    reads = schedules(source)
    for label in ("a", "b"):
        uri = source.targets[label].uri
        assert reads[uri]["reads"] - before.get(uri, {}).get("reads", 0) <= 2


def test_a_target_that_cannot_tell_is_unknown_and_comes_after(clean):
    """A target without job-list cannot tell what it runs: its estimate is
    unknown, says why, and the job goes where it is known; it is still a
    candidate (its scheduler says the job is feasible)."""
    source = clean
    b = source.targets["b"]
    configure(source, ["b", "c"])
    b.run("module", "remove", "job-list")
    try:
        jobid = source.submit(
            "--dependency=delegate:earliest_start", *job_args(2, "10m", "0.1s")
        )
        context = choice(source, jobid)
        by_label = {c["label"]: c for c in context["candidates"]}
        assert by_label["b"]["verdict"] == "feasible"
        assert by_label["b"].get("estimate") is None
        assert by_label["b"]["basis"].startswith("unknown: job-list.list:")
        assert context["order"] == ["c", "b"]
        assert source.status(jobid) == 0
    finally:
        b.run("module", "load", "job-list")


def test_include_local_keeps_a_job_home_when_home_starts_it_soonest(clean):
    source = clean
    a = source.targets["a"]
    configure(source, ["a"], **{"include-local": True})
    a.wait_event(a.submit(*job_args(8, "1h")), "alloc")
    before = len(a.jobs())
    jobid = source.submit("--dependency=delegate:earliest_start", *job_args(2, "10m", "0.1s"))
    context = choice(source, jobid)
    assert context["choice"] == "local" and estimates(context)["local"] == 0
    assert source.status(jobid) == 0
    names = [e["name"] for e in source.eventlog(jobid)]
    assert "delegated" not in names and "alloc" in names
    assert "alloc-bypass" not in json.dumps(source.eventlog(jobid))  # scheduled here
    assert len(a.jobs()) == before  # nothing sent there


def test_include_local_sends_the_job_away_when_home_is_busy(clean):
    source = clean
    configure(source, ["a"], **{"include-local": True})
    home = source.submit(*job_args(4, "1h"))
    source.wait_event(home, "alloc")
    jobid = source.submit("--dependency=delegate:earliest_start", *job_args(2, "10m", "0.1s"))
    context = choice(source, jobid)
    assert context["choice"] == "a"
    assert 3500 < estimates(context)["local"] <= 3600
    assert source.wait_event(jobid, "delegated")["context"]["label"] == "a"
    assert source.status(jobid) == 0


def test_delegate_local_false_keeps_the_job_off_home(clean):
    source = clean
    configure(source, ["a"], **{"include-local": True})
    jobid = source.submit(
        "--dependency=delegate:earliest_start", "-S", "delegate-local=false",
        *job_args(1, "10m", "0.1s"),
    )
    context = choice(source, jobid)
    assert [c["label"] for c in context["candidates"]] == ["a"]
    assert source.status(jobid) == 0


def test_bad_include_local_values_are_refused(clean):
    source = clean
    proc = source.run(
        "submit", "--dependency=delegate:earliest_start", "-S", "delegate-local=%n",
        "true", check=False,
    )
    assert proc.returncode != 0 and "delegate-local" in proc.stderr and "%n" in proc.stderr
    bad = source.resources + '\n[delegate-policy]\ninclude-local = "yes%n"\n'
    proc = source.run("config", "load", input=bad, check=False)
    assert proc.returncode != 0 and "include-local must be true or false" in proc.stderr
