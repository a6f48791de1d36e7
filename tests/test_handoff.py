"""How a job goes on to its target: from job.new when delegation is its
only dependency (early-handoff), from DEPEND otherwise; the pre-flight's
"feasible" answers kept for a while (preflight-cache); and how its end comes
back: through the target's journal as well as the remote eventlog
(journal), its output taken from the remote finish on.  On real instances;
how much sooner is measured by the benchmark, not here."""

import json
import os
import signal
import time

import pytest
from flux_instance import PERILOG_CONFIG

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


def test_jobs_of_a_burst_past_the_window_go_on_without_a_look_at_their_eventlog(request, fresh_source):
    # 40 jobs while their target is stopped: 32 go on from job.new (the
    # admission window) and wait for it, the rest wait their turn, and
    # still need no look at their eventlog when it comes (nothing can have
    # been delegated before).
    from conftest import start_instance

    target = start_instance(request, name="stopped-briefly")
    fresh_source.load_plugin()
    assert fresh_source.status(fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")) == 0
    pid = int(target.run("getattr", "broker.pid").stdout)
    os.kill(pid, signal.SIGSTOP)
    request.addfinalizer(lambda: os.kill(pid, signal.SIGCONT))
    try:
        jobids = fresh_source.submit("--cc=1-40", f"--dependency=delegate:{target.uri}", "true").split()
        deadline = time.monotonic() + 10
        while query(fresh_source)["admission"]["waiting"] == 0:
            assert time.monotonic() < deadline, query(fresh_source)["admission"]
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
    for jobid in jobids:
        assert fresh_source.status(jobid) == 0
    taken = counts(fresh_source)
    assert taken["early-queued"] > 0, taken
    assert (taken["early"] + taken["early-queued"], taken["at-depend"]) == (41, 0), taken


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


def query(instance):
    return json.loads(instance.run("jobtap", "query", "delegate.so").stdout)


def settled_watchers(target):
    """The eventlog watches the target's job-info has, once steady."""
    counts = []
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        time.sleep(0.2)
        counts.append(json.loads(target.run("module", "stats", "job-info").stdout)["watchers"])
    return counts[-1]


def test_the_end_comes_through_the_targets_journal(fresh_source, target):
    fresh_source.load_plugin()
    jobs = [fresh_source.submit(f"--dependency=delegate:{target.uri}", "true") for _ in range(3)]
    failing = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "exit 3")
    assert [fresh_source.status(j) for j in jobs] == [0, 0, 0]
    assert fresh_source.status(failing) == 3
    assert query(fresh_source)["journals"] == {target.uri: "reading"}
    # Every one whose submit the journal saw (all but, maybe, the first:
    # the journal is asked as the connection opens, with its submit).
    assert query(fresh_source)["counts"]["ended-by-journal"] >= 3
    # While one runs, the target's job-info watches what it watches for a
    # job submitted there directly (its shell's), and one more, of ours:
    # its output's, copied as it comes (live output); no eventlog watch.
    direct = target.submit("sleep", "300")
    target.run("job", "wait-event", direct, "start")
    baseline = settled_watchers(target)
    target.run("cancel", direct)
    target.wait_event(direct, "clean")
    # A remote job canceled there: the exception comes the same way.
    sleeper = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    rid = fresh_source.wait_event(sleeper, "delegated")["context"]["jobid"]
    target.run("job", "wait-event", str(rid), "start")
    assert settled_watchers(target) == baseline + 1
    target.run("cancel", "--message=not now", str(rid))
    fresh_source.wait_event(sleeper, "clean")
    exc = fresh_source.exception(sleeper)
    assert exc["type"] == "DelegationFailure" and "not now" in exc["note"]


def reload_job_manager(instance):
    """Reload the instance's job-manager, its jobs kept (it reads them back
    from the KVS), and the modules that need it around it.  Its journal
    ends for whoever reads it; the connection stays up."""
    dependents = ("sched-simple", "job-exec", "job-list")
    for name in dependents:
        instance.run("module", "remove", name)
    instance.run("module", "reload", "job-manager")
    for name in reversed(dependents):
        instance.run("module", "load", name)


def test_jobs_go_on_by_their_eventlog_once_the_targets_journal_ends(fresh_source, request):
    from conftest import start_instance

    target = start_instance(request, name="journal-end")
    target.use_sched_simple()
    fresh_source.load_plugin()
    warm = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(warm) == 0
    assert query(fresh_source)["journals"] == {target.uri: "reading"}
    target.run("queue", "stop")
    # Delegated, and pending there, while the journal that brings its
    # events ends: it is followed by a watch of its remote eventlog.
    pending = fresh_source.submit(
        f"--dependency=delegate:{target.uri}", "sh", "-c", "echo pending; exit 4"
    )
    rid = fresh_source.wait_event(pending, "delegated")["context"]["jobid"]
    before = query(fresh_source)["counts"]["ended-by-journal"]
    reload_job_manager(target)
    deadline = time.time() + 10
    while not (journal := query(fresh_source)["journals"][target.uri]).startswith("ended: "):
        assert time.time() < deadline, journal
        time.sleep(0.1)
    # A job sent after: followed by its watch from the start.
    later = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    fresh_source.wait_event(later, "delegated")
    target.run("queue", "start")
    assert fresh_source.status(pending) == 4
    attached = fresh_source.run("job", "attach", pending, check=False)
    assert attached.stdout == "pending\n", (attached, fresh_source.dmesg()[-4000:])
    assert fresh_source.status(later) == 0
    assert target.status(str(rid)) == 4  # the same remote job, run once
    assert query(fresh_source)["counts"]["ended-by-journal"] == before
    assert "journal of" in fresh_source.dmesg()


def test_journal_false_follows_by_the_eventlog_alone(fresh_source, target):
    fresh_source.load_plugin(None, "journal=false")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "echo out; exit 2")
    assert fresh_source.status(jobid) == 2
    assert fresh_source.run("job", "attach", jobid, check=False).stdout == "out\n"
    assert query(fresh_source)["journals"] == {target.uri: "off"}
    assert query(fresh_source)["counts"]["ended-by-journal"] == 0


@pytest.fixture(scope="module")
def slow_epilog(request):
    """A target whose job epilog takes 3 s: between a job's finish and its
    clean, its target cleans up for a while."""
    from conftest import start_instance

    return start_instance(
        request,
        name="slow-epilog",
        config=PERILOG_CONFIG + '[job-manager.epilog]\ncommand = ["sleep", "3"]\n',
    )


def state(instance, jobid):
    return instance.run("jobs", "-n", "-o", "{state}", jobid).stdout.strip()


def test_output_is_taken_at_the_remote_finish_and_released_at_its_clean(fresh_source, slow_epilog):
    # Between the remote job's finish and its clean, its output is already
    # stored with the local job, which runs on until the clean.
    fresh_source.load_plugin()
    jobid = fresh_source.submit(f"--dependency=delegate:{slow_epilog.uri}", "echo", "taken early")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    slow_epilog.run("job", "wait-event", "-t", "30", rid, "finish")
    key = fresh_source.run("job", "id", "--to=kvs", jobid).stdout.strip() + ".guest.output"
    deadline = time.monotonic() + 2.5
    while "taken early" not in fresh_source.run("kvs", "get", "--raw", key, check=False).stdout:
        assert time.monotonic() < deadline, "output not stored during the remote epilog"
        time.sleep(0.05)
    assert "clean" not in [e["name"] for e in slow_epilog.eventlog(rid)]
    assert state(fresh_source, jobid) == "RUN"
    assert fresh_source.status(jobid) == 0
    finished = fresh_source.wait_event(jobid, "finish")["timestamp"]
    assert finished >= slow_epilog.wait_event(rid, "clean")["timestamp"]
    assert fresh_source.run("job", "attach", jobid).stdout == "taken early\n"


def test_a_remote_exception_after_the_finish_fails_the_job(fresh_source, slow_epilog):
    # A fatal exception on the remote job during its epilog, its output
    # taken already: the job ends with it, never finished as if it had not.
    fresh_source.load_plugin()
    jobid = fresh_source.submit(f"--dependency=delegate:{slow_epilog.uri}", "echo", "ran")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    slow_epilog.run("job", "wait-event", "-t", "30", rid, "finish")
    slow_epilog.run("job", "raise", "--severity=0", "--type=test", "--message=after the finish", rid)
    fresh_source.wait_event(jobid, "clean")
    exc = fresh_source.exception(jobid)
    assert exc["type"] == "DelegationFailure", exc
    assert "test exception: after the finish" in exc["note"], exc
    names = [e["name"] for e in fresh_source.eventlog(jobid)]
    assert "finish" not in names  # (its "start": its output was copied as it came)
    assert fresh_source.status(jobid) != 0
    # The plugin is at rest, and the next job goes on.
    assert fresh_source.status(fresh_source.submit("true")) == 0


def test_a_job_canceled_while_its_target_cleans_up_ends_canceled(fresh_source, slow_epilog):
    fresh_source.load_plugin()
    jobid = fresh_source.submit(f"--dependency=delegate:{slow_epilog.uri}", "true")
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    slow_epilog.run("job", "wait-event", "-t", "30", rid, "finish")
    fresh_source.run("cancel", "--message=enough", jobid)
    fresh_source.wait_event(jobid, "clean")
    assert fresh_source.exception(jobid)["type"] == "cancel"
    assert "finish" not in [e["name"] for e in fresh_source.eventlog(jobid)]
    slow_epilog.wait_event(rid, "clean")  # and the remote job ends on its own
    assert query(fresh_source)["jobs"] == {}


def output_counts(instance):
    """How the outputs were read ({way: count}, the ways taken)."""
    taken = counts(instance)
    ways = ("from-namespace", "from-job-directory", "watched")
    return {way: taken[f"output-{way}"] for way in ways if taken[f"output-{way}"]}


def test_output_taken_once_the_namespace_is_moved_is_read_where_it_was_moved(
    fresh_source, slow_epilog
):
    # A load that comes to a remote job after its finish (here: unloaded
    # while it ran, loaded again during the target's 3 s epilog) finds the
    # guest namespace moved, and reads the output from the job's KVS
    # directory, where the target moved it.
    fresh_source.load_plugin(None, "live-output=false")
    jobid = fresh_source.submit(
        f"--dependency=delegate:{slow_epilog.uri}", "sh", "-c", "sleep 1; echo read late"
    )
    rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
    fresh_source.remove_plugin()
    slow_epilog.run("job", "wait-event", "-t", "30", rid, "finish")
    fresh_source.load_plugin(None, "live-output=false")
    assert fresh_source.status(jobid) == 0
    assert fresh_source.run("job", "attach", jobid).stdout == "read late\n"
    assert output_counts(fresh_source) == {"from-job-directory": 1}


def test_a_remote_job_without_output_leaves_none_to_the_local_job(fresh_source, target):
    # Run in test exec mode there: no shell, so no output in its guest
    # namespace (ENOENT), and job-info, asked what there is, says none.
    fresh_source.load_plugin(None, "live-output=false")
    jobid = fresh_source.submit(
        f"--dependency=delegate:{target.uri}", "--setattr=system.exec.test.run_duration=0.01s", "true"
    )
    assert fresh_source.status(jobid) == 0
    attached = fresh_source.run("job", "attach", jobid, check=False)
    assert attached.stdout == "" and "No job output found" in attached.stderr
    assert output_counts(fresh_source) == {"watched": 1}


def test_the_output_is_read_whole_from_the_guest_namespace(fresh_source, target):
    # Taken at the remote finish from the job's guest namespace, before the
    # target moves it: all of it, the shell's messages after the tasks'
    # last output too (-o verbose=2: "exit 0" comes after every eof).  The
    # target moves the namespace a few milliseconds after the finish: a
    # read that comes later (a busy machine) reads the job's directory (the
    # test above), whole too.  Jobs are sent until one is read from the
    # namespace, up to 12.
    fresh_source.load_plugin(None, "live-output=false")
    for n in range(1, 13):
        jobid = fresh_source.submit(
            f"--dependency=delegate:{target.uri}", "-o", "verbose=2", "sh", "-c", "echo hi"
        )
        assert fresh_source.status(jobid) == 0
        rid = str(fresh_source.wait_event(jobid, "delegated")["context"]["jobid"])
        remote = target.eventlog(rid, "guest.output")
        local = fresh_source.eventlog(jobid, "guest.output")
        eofs = [i for i, e in enumerate(remote) if e["context"].get("eof")]
        assert remote[-1]["name"] == "log" and len(remote) > max(eofs) + 1
        assert [(e["name"], e["context"]) for e in local] == [
            (e["name"], e["context"]) for e in remote
        ]
        attached = fresh_source.run("job", "attach", jobid)
        assert attached.stdout == "hi\n" and "exit 0" in attached.stderr
        taken = output_counts(fresh_source)
        assert sum(taken.values()) == n and "watched" not in taken, taken
        if taken.get("from-namespace", 0) >= 1:
            break
    assert taken.get("from-namespace", 0) >= 1, taken


def test_two_sources_on_one_target_each_get_their_own_ends(source, fresh_source, target):
    # Both read the target's journal, which carries every job's events: each
    # takes only its own (the origin record of the submit).
    fresh_source.load_plugin()
    mine = {}
    for n in range(4):
        mine[source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", f"exit {n}")] = (
            source,
            n,
        )
        mine[fresh_source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", f"exit {n + 10}")] = (
            fresh_source,
            n + 10,
        )
    for jobid, (instance, code) in mine.items():
        assert instance.status(jobid) == code
    assert query(fresh_source)["counts"]["ended-by-journal"] >= 3



def test_a_remote_clean_during_the_output_write_releases_the_job_once(fresh_source, target):
    # A megabyte of output takes the plugin longer to read and write than
    # the target takes from the job's finish to its clean: the clean comes
    # while the output is being written, and the job is released once, when
    # it is written.
    fresh_source.load_plugin(None, "live-output=false")
    jobs = [
        fresh_source.submit(
            f"--dependency=delegate:{target.uri}", "sh", "-c", "head -c 1000000 /dev/zero | tr '\\\\0' x"
        )
        for _ in range(4)
    ]
    for jobid in jobs:
        assert fresh_source.status(jobid) == 0, fresh_source.exception(jobid)
        assert len(fresh_source.run("job", "attach", jobid).stdout) == 1000000
        eventlog = fresh_source.eventlog(jobid)
        releases = [
            e for e in eventlog
            if e["name"] == "jobspec-update" and "attributes.system.delegate-release" in e["context"]
        ]
        names = [e["name"] for e in eventlog]
        assert len(releases) == 1 and names.count("dependency-remove") == 1, names
