"""Choosing where a job goes, on real instances: registry, policies,
feasibility pre-flight, provenance and failover.

The source has two sub-instances of its own as targets (flux batch): small
with 1 core and big with 2 cores, so a 2-core job must skip small.
"""

import json
import time

import pytest
from conftest import start_instance
from flux_instance import FluxClient, FluxInstance

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(request, tmp_path_factory):
    """A source instance with two child instances as targets."""
    source = start_instance(request, name="site", size=2)
    source.load_plugin()
    out = tmp_path_factory.mktemp("site")
    children = {}
    for label, cores in (("small", 1), ("big", 2)):
        jobid = source.run(
            "batch", f"-n{cores}", f"--output={out}/{label}.out", "--wrap", "sleep", "3600"
        ).stdout.strip()
        source.wait_memo(jobid, "uri", timeout=60)
        uri = source.run("uri", "--local", jobid).stdout.strip()
        children[label] = FluxClient(uri)
    source.small, source.big = children["small"], children["big"]
    source.registry = (
        f'[[delegate]]\nlabel = "small"\nuri = "{source.small.uri}"\n\n'
        f'[[delegate]]\nlabel = "big"\nuri = "{source.big.uri}"\n'
    )
    configure(source, source.registry)
    return source


def configure(instance, toml, check=True):
    return instance.run("config", "load", input=toml, check=check)


def choice(instance, jobid):
    return instance.wait_event(jobid, "delegate-choice")["context"]


def delegated(instance, jobid):
    return instance.wait_event(jobid, "delegated")["context"]


def names(client):
    return [j["name"] for j in client.jobs()]


def test_label_names_a_registry_entry(site):
    jobid = site.submit("--dependency=delegate:big", "true")
    context = delegated(site, jobid)
    assert (context["label"], context["uri"]) == ("big", site.big.uri)
    assert site.status(jobid) == 0


def test_feasibility_skips_the_small_target(site):
    for _ in range(4):
        jobid = site.submit("-S", "system.delegate=random", "-n2", "true")
        assert delegated(site, jobid)["label"] == "big"
        verdicts = {c["label"]: c["verdict"] for c in choice(site, jobid)["candidates"]}
        assert verdicts == {"small": "infeasible", "big": "feasible"}
        assert site.status(jobid) == 0


def test_job_no_target_can_run_fails_with_every_reason(site):
    before = (len(site.small.jobs()), len(site.big.jobs()))
    jobid = site.submit("--dependency=delegate:least_pending", "-n4", "--job-name=huge", "true")
    site.wait_event(jobid, "clean")
    exc = site.exception(jobid)
    assert exc["type"] == "DelegationFailure" and exc["severity"] == 0
    assert "no target can run this job" in exc["note"]
    assert f"small ({site.small.uri}): infeasible" in exc["note"]
    assert f"big ({site.big.uri}): infeasible" in exc["note"]
    events = site.eventlog(jobid)
    assert events[-1]["timestamp"] - events[0]["timestamp"] < 10.0  # see benchmark
    assert (len(site.small.jobs()), len(site.big.jobs())) == before
    assert choice(site, jobid)["choice"] is None


@pytest.mark.parametrize("style", ["attribute", "dependency"])
def test_assign_counts_from_zero(site, style):
    def submit(policy):
        if style == "attribute":
            return site.submit("-S", f"system.delegate={policy}", "true")
        return site.submit(f"--dependency=delegate:{policy}", "true")

    assert delegated(site, submit("assign"))["label"] == "small"
    assert delegated(site, submit("assign:0"))["label"] == "small"
    assert delegated(site, submit("assign:1"))["label"] == "big"
    for policy, message in (
        ("assign:2", "assign: sub-instance ID 2 out of range (0..1)"),
        ("assign:x", "assign: 'x' is not a number"),
    ):
        jobid = submit(policy)
        site.wait_event(jobid, "clean")
        exc = site.exception(jobid)
        assert exc["type"] == "DelegationFailure"
        assert message in exc["note"]


def test_least_pending_prefers_the_idle_target(site):
    # Hold jobs in small: least_pending then prefers big, and the other
    # way round.
    held = [site.small.submit("--urgency=0", "true") for _ in range(3)]
    try:
        jobid = site.submit("--dependency=delegate:least_pending", "true")
        assert delegated(site, jobid)["label"] == "big"
        pending = {c["label"]: c["pending"] for c in choice(site, jobid)["candidates"]}
        assert pending["small"] >= 3 and pending["small"] > pending["big"]
        assert choice(site, jobid)["policy"] == "least_pending"
    finally:
        for h in held:
            site.small.run("cancel", h)
    held = [site.big.submit("--urgency=0", "true") for _ in range(3)]
    try:
        jobid = site.submit("--dependency=delegate:least_pending", "true")
        assert delegated(site, jobid)["label"] == "small"
    finally:
        for h in held:
            site.big.run("cancel", h)


def fluxion_installed(instance):
    return any("fluxion" in name for name in instance.sched_modules())


def test_shortest_match_without_fluxion_fails_clearly(request, fresh_source):
    plain = start_instance(request, name="sched-simple-target")
    if fluxion_installed(plain):
        plain.use_sched_simple()
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("plain", plain.uri)))
    assert plain.sched_modules() == ["sched-simple"]
    jobid = fresh_source.submit("-S", "system.delegate=shortest_match", "true")
    fresh_source.wait_event(jobid, "clean")
    exc = fresh_source.exception(jobid)
    assert exc is not None, fresh_source.eventlog(jobid)
    note = exc["note"]
    assert "shortest_match: no target runs Fluxion" in note, fresh_source.eventlog(jobid)
    assert "plain" in note and "sched-fluxion-resource" in note


def test_shortest_match_with_fluxion(site):
    if not fluxion_installed(site):
        pytest.skip("Fluxion (flux-sched) is not installed: targets run sched-simple")
    jobid = site.submit("-S", "system.delegate=shortest_match", "true")
    chosen = delegated(site, jobid)["label"]
    candidates = {c["label"]: c for c in choice(site, jobid)["candidates"]}
    times = {label: c["match_time"] for label, c in candidates.items()}
    assert all(isinstance(t, float) for t in times.values()), candidates
    assert times[chosen] == min(times.values())
    assert choice(site, jobid)["policy"] == "shortest_match"
    assert site.status(jobid) == 0


def test_random_uses_both_targets(site):
    labels = set()
    for _ in range(16):
        labels.add(delegated(site, site.submit("-S", "system.delegate=random", "true"))["label"])
    assert labels == {"small", "big"}


def test_custom_python_policy(site, tmp_path):
    policy = tmp_path / "site_policy.py"
    policy.write_text(
        "def by_user_attribute(job, candidates):\n"
        "    wanted = job.attributes.get('user', {}).get('cluster')\n"
        "    return [c for c in candidates if c.label == wanted and c.usable]\n"
    )
    configure(
        site,
        site.registry
        + f'\n[delegate-policy.custom]\nwanted = "{policy}:by_user_attribute"\n',
    )
    try:
        for wanted in ("small", "big", "small"):
            jobid = site.submit(
                "-S", "system.delegate=wanted", f"--setattr=user.cluster={wanted}", "true"
            )
            assert delegated(site, jobid)["label"] == wanted
            assert choice(site, jobid)["policy"] == "wanted"
        jobid = site.submit("-S", "system.delegate=wanted", "--setattr=user.cluster=none", "true")
        site.wait_event(jobid, "clean")
        assert "not chosen by the policy" in site.exception(jobid)["note"]
    finally:
        configure(site, site.registry)


def test_default_policy_for_an_empty_value(site):
    configure(site, site.registry + '\n[delegate-policy]\ndefault = "assign:1"\n')
    try:
        jobid = site.submit("--dependency=delegate", "true")
        assert delegated(site, jobid)["label"] == "big"
        assert choice(site, jobid)["policy"] == "assign:1"
    finally:
        configure(site, site.registry)


def test_old_config_format(site):
    configure(site, f'delegate = ["{site.small.uri}", "{site.big.uri}"]\n')
    try:
        jobid = site.submit("-S", "system.delegate=assign:1", "true")
        context = delegated(site, jobid)
        assert context["uri"] == site.big.uri and "label" not in context
        assert site.status(jobid) == 0
    finally:
        configure(site, site.registry)


def test_config_reload_and_bad_config(site):
    configure(site, f'[[delegate]]\nlabel = "small"\nuri = "{site.small.uri}"\n')
    try:
        proc = site.run("submit", "--dependency=delegate:big", "true", check=False)
        assert proc.returncode != 0 and "not a URI, job id, registry label or policy: 'big'" in proc.stderr
        # A bad registry is refused with a message; the previous one stays.
        bad = configure(site, '[[delegate]]\nlabel = "x"\n', check=False)
        assert bad.returncode != 0
        assert "delegate[0]: 'uri' must be a non-empty string" in bad.stderr
        jobid = site.submit("--dependency=delegate:small", "true")
        assert delegated(site, jobid)["label"] == "small"
    finally:
        configure(site, site.registry)
    jobid = site.submit("--dependency=delegate:big", "true")
    assert delegated(site, jobid)["label"] == "big"


def test_user_registry_file(request, site, tmp_path):
    registry = tmp_path / "delegate.yaml"
    registry.write_text(
        f"delegate:\n  - label: home\n    uri: {site.big.uri}\n"
        f"  - label: small\n    uri: local:///overridden\n"
    )
    source = start_instance(request, name="user-registry")
    source.load_plugin(None, f"registry={registry}")
    configure(source, f'[[delegate]]\nlabel = "small"\nuri = "{site.small.uri}"\n')
    jobid = source.submit("--dependency=delegate:home", "true")
    assert delegated(source, jobid)["uri"] == site.big.uri
    # The broker config's "small" wins over the user's.
    jobid = source.submit("--dependency=delegate:small", "true")
    assert delegated(source, jobid)["uri"] == site.small.uri
    # Edits to the file take effect for new jobs.
    registry.write_text(f"delegate:\n  - label: away\n    uri: {site.big.uri}\n")
    jobid = source.submit("--dependency=delegate:away", "true")
    assert delegated(source, jobid)["uri"] == site.big.uri
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    assert [c["label"] for c in query["registry"]] == ["small", "away"]


# -- failover ---------------------------------------------------------------------


@pytest.fixture
def spare(request):
    """A healthy target of its own."""
    return start_instance(request, name="spare")


def registry_of(*pairs):
    return "".join(f'[[delegate]]\nlabel = "{label}"\nuri = "{uri}"\n\n' for label, uri in pairs)


def test_stopped_target_is_skipped(request, fresh_source, spare):
    gone = FluxInstance(name="gone").start()
    gone_uri = gone.uri
    gone.cleanup()
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("gone", gone_uri), ("spare", spare.uri)))
    jobid = fresh_source.submit("-S", "system.delegate=assign:0", "true")
    assert delegated(fresh_source, jobid)["label"] == "spare"
    verdicts = {c["label"]: c["verdict"] for c in choice(fresh_source, jobid)["candidates"]}
    assert verdicts == {"gone": "unreachable", "spare": "feasible"}
    assert fresh_source.status(jobid) == 0


def test_failover_on_remote_alloc_exception(request, fresh_source, spare):
    stuck = start_instance(request, name="stuck")
    stuck.run("queue", "stop")
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("stuck", stuck.uri), ("spare", spare.uri)))
    jobid = fresh_source.submit("-S", "system.delegate=assign:0", "sh", "-c", "exit 4")
    first = delegated(fresh_source, jobid)
    assert first["label"] == "stuck"
    # The target cannot allocate the job: an alloc exception before start.
    stuck.run("job", "raise", "--type=alloc", "--message=no nodes", str(first["jobid"]))
    assert fresh_source.status(jobid) == 4
    events = fresh_source.eventlog(jobid)
    failover = [e["context"] for e in events if e["name"] == "delegate-failover"]
    assert len(failover) == 1 and failover[0]["label"] == "stuck"
    assert "alloc exception" in failover[0]["reason"] and failover[0]["next"] == "spare"
    landed = [e["context"]["label"] for e in events if e["name"] == "delegated"]
    assert landed == ["stuck", "spare"]
    # It never ran in two places: the stuck target's job never started.
    rid = str(first["jobid"])
    assert "start" not in [e["name"] for e in stuck.eventlog(rid)]


def requeue_scenario(request, fresh_source, spare, tmp_path, *submit_args, again="exit 4"):
    """A job that starts on its first target, which then raises an alloc
    exception on it (its allocation failed): (jobid, first delegation).
    The command runs 'again' if it ran before (a marker file), else sleeps."""
    failing = start_instance(request, name="failing")
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("failing", failing.uri), ("spare", spare.uri)))
    marker = tmp_path / "ran-before"
    script = f"test -e {marker} && {{ {again}; }}; touch {marker}; sleep 300"
    jobid = fresh_source.submit(
        "-S", "system.delegate=assign:0", *submit_args, "sh", "-c", script
    )
    first = delegated(fresh_source, jobid)
    assert first["label"] == "failing"
    rid = str(first["jobid"])
    failing.wait_event(rid, "start")
    deadline = time.time() + 30
    while not marker.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    failing.run("job", "raise", "--type=alloc", "--message=node lost", rid)
    return jobid, failing, rid


def test_a_started_job_is_requeued_on_an_alloc_exception(request, fresh_source, spare, tmp_path):
    """Requeue semantics, as Slurm requeues on node failure: the remote
    job's allocation failed while it ran, so it runs again elsewhere; the
    failover event says it had started."""
    jobid, failing, rid = requeue_scenario(request, fresh_source, spare, tmp_path)
    assert fresh_source.status(jobid) == 4  # ran again, on spare
    events = fresh_source.eventlog(jobid)
    failover = [e["context"] for e in events if e["name"] == "delegate-failover"]
    assert len(failover) == 1, events
    assert failover[0]["label"] == "failing" and failover[0]["next"] == "spare"
    assert failover[0]["started"] is True
    assert "alloc exception" in failover[0]["reason"]
    assert [e["context"]["label"] for e in events if e["name"] == "delegated"] == ["failing", "spare"]
    failing.wait_event(rid, "clean")  # the first run ended there


def test_a_job_requeued_while_it_runs_here_shows_and_streams_its_new_remote_job(
    request, fresh_source, spare, tmp_path
):
    """Running here (R) from its first remote job's start, it stays R
    through the requeue; once the job runs again on spare, its annotation
    names spare and the new remote job, and its output is the second run's
    alone (the first run printed nothing)."""
    jobid, failing, rid = requeue_scenario(
        request, fresh_source, spare, tmp_path, again="echo second run; sleep 3; exit 4"
    )
    deadline = time.time() + 30
    while len(landed := [e for e in fresh_source.eventlog(jobid) if e["name"] == "delegated"]) < 2:
        assert time.time() < deadline
        time.sleep(0.1)
    second = str(landed[1]["context"]["jobid"])
    spare.wait_event(second, "start")
    deadline = time.time() + 10
    while True:
        shown = json.loads(fresh_source.run("jobs", "-a", "--json", jobid).stdout)
        note = shown.get("annotations", {}).get("user", {}).get("delegate", {})
        if note.get("uri") == spare.uri and note.get("state") == "running":
            break
        assert time.time() < deadline, note
        time.sleep(0.1)
    assert shown["state"] == "RUN"
    from flux.job import JobID

    assert note["jobid"] == JobID(int(second)).f58
    assert fresh_source.status(jobid) == 4
    assert fresh_source.run("job", "attach", jobid, check=False).stdout == "second run\n"


def test_a_job_may_opt_out_of_requeue(request, fresh_source, spare, tmp_path):
    jobid, failing, rid = requeue_scenario(
        request, fresh_source, spare, tmp_path, "-S", "delegate-requeue=false"
    )
    fresh_source.wait_event(jobid, "clean", timeout=30)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert "failed: alloc exception: node lost" in exc["note"]
    assert "not requeued: the job opted out (delegate-requeue=false)" in exc["note"]
    assert "delegate-failover" not in [e["name"] for e in fresh_source.eventlog(jobid)]
    assert spare.jobs() == [] or all(j["name"] != "sh" for j in spare.jobs())


def test_other_exceptions_after_start_end_the_job(request, fresh_source, spare):
    failing = start_instance(request, name="failing-otherwise")
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("failing", failing.uri), ("spare", spare.uri)))
    jobid = fresh_source.submit("-S", "system.delegate=assign:0", "sleep", "300")
    rid = str(delegated(fresh_source, jobid)["jobid"])
    failing.wait_event(rid, "start")
    failing.run("job", "raise", "--type=node-failure", "--message=rank 0 lost", rid)
    fresh_source.wait_event(jobid, "clean", timeout=30)
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure" and "node-failure exception: rank 0 lost" in exc["note"]
    assert "delegate-failover" not in [e["name"] for e in fresh_source.eventlog(jobid)]


def test_failover_when_a_target_rejects(request, fresh_source, spare):
    strict = start_instance(request, name="strict", config='[policy.limits]\nduration = "1m"\n')
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("strict", strict.uri), ("spare", spare.uri)))
    jobid = fresh_source.submit("-S", "system.delegate=assign:0", "-t", "1h", "true")
    assert delegated(fresh_source, jobid)["label"] == "spare"
    failover = fresh_source.wait_event(jobid, "delegate-failover")["context"]
    assert failover["label"] == "strict" and "duration" in failover["reason"]
    assert fresh_source.status(jobid) == 0
    assert strict.jobs() == []


def test_all_targets_fail(request, fresh_source):
    limits = '[policy.limits]\nduration = "1m"\n'
    first = start_instance(request, name="strict1", config=limits)
    second = start_instance(request, name="strict2", config=limits)
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("one", first.uri), ("two", second.uri)))
    jobid = fresh_source.submit("-S", "system.delegate=assign", "-t", "1h", "true")
    fresh_source.wait_event(jobid, "clean")
    note = fresh_source.exception(jobid)["note"]
    assert note.startswith("delegate: all targets failed: ")
    assert f"one ({first.uri}): submit to {first.uri} failed" in note
    assert f"two ({second.uri}): submit to {second.uri} failed" in note
    assert "delegated" not in [e["name"] for e in fresh_source.eventlog(jobid)]


def test_bad_registry_does_not_stop_the_instance(request, tmp_path):
    """Loaded from broker config with a bad registry, the plugin starts
    (no registry) and says why; a good config then works."""
    from test_restart import example_config

    config = example_config() + '\n[[delegate]]\nlabel = "x"\nuri = "http://nope"\n'
    source = start_instance(request, name="bad-config", config=config)
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    assert "'http://nope' is not a local:// or ssh:// URI" in query["registry-error"]
    spare = start_instance(request, name="good-target")
    configure(source, f'[[delegate]]\nlabel = "good"\nuri = "{spare.uri}"\n')
    jobid = source.submit("--dependency=delegate:good", "true")
    assert source.status(jobid) == 0


def test_job_delegated_to_a_label_since_removed_is_still_followed(request, site, tmp_path):
    registry = tmp_path / "delegate.yaml"
    registry.write_text(f"delegate:\n  - label: home\n    uri: {site.big.uri}\n")
    source = start_instance(request, name="changing-registry")
    source.load_plugin(None, f"registry={registry}")
    jobid = source.submit("--dependency=delegate:home", "sh", "-c", "sleep 2; exit 3")
    source.wait_event(jobid, "delegated")
    registry.write_text("delegate: []\n")
    source.remove_plugin()
    source.load_plugin(None, f"registry={registry}")
    assert source.status(jobid, timeout=30) == 3


def test_target_without_feasibility_service_is_unknown_not_no(request, fresh_source):
    """ENOSYS from feasibility.check (no scheduler answers it) is "unknown":
    the job is still sent, and runs once a scheduler is there."""
    bare = start_instance(request, name="no-scheduler")
    bare.remove_scheduler()
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("bare", bare.uri)))
    jobid = fresh_source.submit("--dependency=delegate:bare", "true")
    candidates = choice(fresh_source, jobid)["candidates"]
    assert candidates[0]["verdict"] == "unknown"
    assert candidates[0]["reason"] == "no feasibility service"
    delegated(fresh_source, jobid)
    bare.run("module", "load", "sched-simple")  # a scheduler is back
    assert fresh_source.status(jobid, timeout=60) == 0


#: A feasibility service that answers what is not JSON (a broken target).
JUNK_FEASIBILITY = """
import flux
h = flux.Flux()
h.service_register("feasibility").get()
def answer(h, t, msg, arg):
    h.respond(msg, "not json %n")
keep = h.msg_watcher_create(answer, topic_glob="feasibility.*")
keep.start()
print("ready", flush=True)
h.reactor_run()
"""


def test_a_candidate_answering_what_is_not_json_is_passed_over(request, fresh_source, spare):
    """One broken target in a registry fails no job: it is infeasible, with
    the reason, and the next candidate takes the job."""
    import subprocess

    junk = start_instance(request, name="junk-feasibility")
    junk.remove_scheduler()
    service = subprocess.Popen(
        ["flux", "python", "-c", JUNK_FEASIBILITY], env=junk.env(), stdout=subprocess.PIPE, text=True
    )
    request.addfinalizer(service.kill)
    assert service.stdout.readline().strip() == "ready"
    fresh_source.load_plugin()
    configure(fresh_source, registry_of(("junk", junk.uri), ("spare", spare.uri)))
    jobid = fresh_source.submit("-S", "system.delegate=assign:0", "true")
    assert fresh_source.status(jobid, timeout=60) == 0
    candidates = {c["label"]: c for c in choice(fresh_source, jobid)["candidates"]}
    assert candidates["junk"]["verdict"] == "infeasible"
    assert "not JSON" in candidates["junk"]["reason"]
    assert delegated(fresh_source, jobid)["uri"] == spare.uri
    assert "handler error" not in fresh_source.dmesg()
