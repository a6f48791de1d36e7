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


# -- moving a pending job ------------------------------------------------------

MOVING = {"move-margin": 30, "move-interval": 1}


def moved_setup(source):
    """a busy for 100s, c for 300s: a 4-core job goes to a, pending there
    behind a's job.  Returns (jobid, its remote id on a, c's busy job)."""
    a, c = source.targets["a"], source.targets["c"]
    configure(source, ["a", "c"], **MOVING)
    a.wait_event(a.submit(*job_args(8, "100s")), "alloc")
    c_busy = c.submit(*job_args(16, "300s"))
    c.wait_event(c_busy, "alloc")
    jobid = source.submit("--dependency=delegate:earliest_start", *job_args(4, "10m", "0.5s"))
    assert choice(source, jobid)["choice"] == "a"
    remote = source.wait_event(jobid, "delegated")["context"]["jobid"]
    return jobid, remote, c_busy


def test_a_pending_job_moves_where_it_now_starts_sooner(clean):
    """c frees up: the job pending on a (about 100s to go) is moved to c
    (0s): held and canceled on a, where it never started, and run once,
    on c; the move is an event with both estimates."""
    source = clean
    a, c = source.targets["a"], source.targets["c"]
    before = len(c.jobs())
    jobid, remote, c_busy = moved_setup(source)
    c.run("cancel", c_busy)
    move = source.wait_event(jobid, "delegate-move", timeout=30)["context"]
    assert move["from"]["label"] == "a" and move["to"]["label"] == "c"
    assert 60 < move["from"]["estimate"] <= 100 and move["to"]["estimate"] == 0
    assert move["jobid"] == remote and move["move"] == 1
    again = source.wait_event(jobid, "delegated", match="label=c")["context"]
    assert source.status(jobid) == 0
    on_a = [e["name"] for e in a.eventlog(str(remote))]
    assert "urgency" in on_a and "alloc" not in on_a and "start" not in on_a
    assert on_a[-1] == "clean"
    note = [e for e in a.eventlog(str(remote)) if e["name"] == "exception"][0]["context"]["note"]
    assert note.startswith("delegate-move: moved to c")
    ran_on_c = [e["name"] for e in c.eventlog(str(again["jobid"]))]
    assert "start" in ran_on_c and "finish" in ran_on_c
    assert len(c.jobs()) == before + 2  # its busy job, and this one: nothing twice


def test_a_job_moved_once_is_not_moved_again(clean):
    """move-max 1: moved from a (200s to go) to c (60s: its job's limit
    cut), then a frees up: it stays pending on c, and runs there."""
    source = clean
    a, c = source.targets["a"], source.targets["c"]
    configure(source, ["a", "c"], **MOVING)
    a_busy = a.submit(*job_args(8, "200s"))
    a.wait_event(a_busy, "alloc")
    c_busy = c.submit(*job_args(16, "400s"))
    c.wait_event(c_busy, "alloc")
    jobid = source.submit("--dependency=delegate:earliest_start", *job_args(8, "10m", "0.5s"))
    assert choice(source, jobid)["choice"] == "a"
    c.run("update", c_busy, "duration=60s")
    move = source.wait_event(jobid, "delegate-move")["context"]
    assert move["to"]["label"] == "c" and 30 < move["to"]["estimate"] <= 60
    on_c = source.wait_event(jobid, "delegated", match="label=c")["context"]["jobid"]
    a.run("cancel", a_busy)
    time.sleep(6)  # sweeps every second, plans read every 2s: a is now far sooner
    assert [e["name"] for e in source.eventlog(jobid)].count("delegate-move") == 1
    assert "alloc" not in [e["name"] for e in c.eventlog(str(on_c))]  # still pending on c
    c.run("cancel", c_busy)
    assert source.status(jobid) == 0


def test_a_job_allocated_as_it_is_held_stays_where_it_is(clean):
    """The target starts the job while it is being moved (the hold comes,
    then its scheduler allocates it): it is not canceled, it runs there,
    once, and nothing is sent to c."""
    import flux
    import flux.job

    source = clean
    a, c = source.targets["a"], source.targets["c"]
    before = len(c.jobs())
    jobid, remote, c_busy = moved_setup(source)
    a_busy = [j for j in a.run("jobs", "-no", "{id}").stdout.split() if int(flux.job.JobID(j)) != remote]
    handle = flux.Flux(a.uri)
    watch = flux.job.event_watch_async(handle, remote)
    c.run("cancel", c_busy)
    while True:
        event = watch.get_event()
        assert event is not None, "no hold"
        if event.name == "urgency":
            break
    # At once, as the target's own scheduler might have: room, and the job
    # allocated (its urgency back).
    flux.job.cancel(handle, flux.job.JobID(a_busy[0]))
    handle.rpc("job-manager.urgency", {"id": remote, "urgency": 16}).get()
    watch.cancel()
    assert source.status(jobid) == 0
    names = [e["name"] for e in source.eventlog(jobid)]
    assert "delegate-move" not in names and names.count("delegated") == 1
    on_a = [e["name"] for e in a.eventlog(str(remote))]
    assert "start" in on_a and "exception" not in on_a
    assert len(c.jobs()) == before + 1  # only its own canceled busy job
    assert "not moved: it was allocated there meanwhile" in source.dmesg()


def test_bad_move_settings_are_refused(clean):
    source = clean
    for key, value, message in (
        ("move-margin", "soon%n", "move-margin=soon%n: not a duration"),
        ("move-max", -1, "move-max must be a whole number"),
        ("move-interval", 0, "move-interval=0: must be more than 0"),
    ):
        bad = source.resources + f"\n[delegate-policy]\n{key} = {json.dumps(value)}\n"
        proc = source.run("config", "load", input=bad, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_a_move_cut_off_by_a_reload_chooses_again(clean):
    """The plugin reloaded between a move's cancel and its submit: the
    reloaded handler finds the remote job ended by the move's cancel (its
    note), and the job chooses again, here c, and runs once."""
    source = clean
    a, c = source.targets["a"], source.targets["c"]
    jobid, remote, c_busy = moved_setup(source)
    source.remove_plugin()
    try:
        a.run("cancel", "-m", "delegate-move: moved to c", str(remote))
        a.wait_event(str(remote), "clean")
        c.run("cancel", c_busy)
    finally:
        source.load_plugin()
    again = source.wait_event(jobid, "delegated", match="label=c")["context"]
    assert source.status(jobid) == 0
    assert [e["name"] for e in source.eventlog(jobid)].count("delegated") == 2
    assert "finish" in [e["name"] for e in c.eventlog(str(again["jobid"]))]
    assert "canceled to move it: choosing again" in source.dmesg()


def test_a_remote_job_canceled_otherwise_still_ends_the_job(clean):
    """Only the move's own note makes a cancel not the job's end."""
    source = clean
    a = source.targets["a"]
    jobid, remote, _ = moved_setup(source)
    a.run("cancel", "-m", "moved to c by hand", str(remote))
    assert source.status(jobid) != 0
    assert "was canceled: moved to c by hand" in source.exception(jobid)["note"]


# -- a target whose plan answers are hostile -------------------------------------

#: A job-list service whose list answers are what the file MODE says:
#: not JSON, the wrong shape, values that are no numbers, a huge list, or
#: no answer at all.
HOSTILE_JOB_LIST = r"""
import json, sys
import flux
mode_file = sys.argv[1]
h = flux.Flux()
h.service_register("job-list").get()
def answer(h, t, msg, arg):
    mode = open(mode_file).read().strip()
    if mode == "junk":
        h.respond(msg, "not json %n")
    elif mode == "shape":
        h.respond(msg, {"jobs": "%s%n"})
    elif mode == "values":
        h.respond(msg, '{"jobs": [{"state": 16, "ncores": 1e308, "ranks": "0-%n",'
                  ' "expiration": NaN}, {"state": 8, "ncores": -5, "nnodes": "x",'
                  ' "duration": Infinity, "priority": [], "annotations": "%n"}, 7]}')
    elif mode == "huge":
        job = {"state": 16, "ncores": 1, "ranks": "0", "expiration": 0, "id": 1}
        h.respond(msg, {"jobs": [job] * 200000})
    # slow: never answers
keep = h.msg_watcher_create(answer, topic_glob="job-list.*")
keep.start()
print("ready", flush=True)
h.reactor_run()
"""


WHY_UNKNOWN = {
    "junk": "not JSON",
    "shape": "not understood",
    "values": "not understood",
    "huge": "more than a plan needs",
    "slow": "not read within",
}


@pytest.mark.parametrize("mode", sorted(WHY_UNKNOWN))
def test_a_target_with_hostile_plan_answers_is_unknown(request, clean, tmp_path, mode):
    """Whatever a target's job-list answers (or not: preflight-timeout),
    its estimate is unknown, with why, never a handler error or a stall:
    the job goes to the target that can tell, and ends ok."""
    source = clean
    b = source.targets["b"]
    configure(source, ["b", "c"])
    errors_before = source.dmesg().count("handler error")  # a refused config's, before
    mode_file = tmp_path / "mode"
    mode_file.write_text(mode)
    b.run("module", "remove", "job-list")
    service = subprocess.Popen(
        [FLUX, "python", "-c", HOSTILE_JOB_LIST, str(mode_file)],
        env=b.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout.readline().strip() == "ready"
        jobid = source.submit("--dependency=delegate:earliest_start", *job_args(2, "1m", "0.1s"))
        context = choice(source, jobid)
        by_label = {x["label"]: x for x in context["candidates"]}
        assert by_label["b"]["verdict"] == "feasible"  # its scheduler says so
        assert by_label["b"].get("estimate") is None
        basis = by_label["b"]["basis"]
        assert basis.startswith("unknown: "), by_label["b"]
        assert WHY_UNKNOWN[mode] in basis, basis
        assert context["order"] == ["c", "b"]
        assert source.status(jobid, timeout=90) == 0
        assert source.dmesg().count("handler error") == errors_before
    finally:
        service.kill()
        service.wait()
        b.run("module", "load", "job-list")
