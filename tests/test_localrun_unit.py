"""Focused tests of jobmanager.localrun: what the plugin posts for a
released job, and how a run held by a site's prolog is taken up again
from its eventlog (the integration tests run it on real brokers:
test_native.py)."""

from unit import needs_flux

pytestmark = needs_flux


class Jobtap:
    def __init__(self):
        self.posted = []

    def post_event(self, jobid, name, context):
        self.posted.append((name, context))


class Job:
    id = 42

    def __init__(self):
        self.runtime = type("Runtime", (), {"jobtap": Jobtap()})()


def posted(run):
    return [name for name, _ in run.job.runtime.jobtap.posted]


def prolog(name, description, timestamp):
    return {"name": name, "timestamp": timestamp, "context": {"description": description}}


def test_open_prologs_tells_ours_from_the_sites():
    from flux_delegate.jobmanager.localrun import open_prologs

    log = [prolog("prolog-start", "delegate", 1), prolog("prolog-start", "site", 2)]
    assert open_prologs(log) == (True, 1)
    log.append(prolog("prolog-finish", "site", 3))
    assert open_prologs(log) == (True, 0)
    log.append(prolog("prolog-finish", "delegate", 4))
    assert open_prologs(log) == (False, 0)


def test_the_run_waits_for_the_sites_prolog():
    from flux_delegate.jobmanager.localrun import LocalRun

    run = LocalRun(Job(), 768)
    run.allocate()
    run.hold()
    run.on_prolog("prolog-start", "delegate", 1.0)  # ours: not counted
    run.on_prolog("prolog-start", "site", 1.1)
    run.finish_when_ready()
    assert posted(run) == ["alloc", "prolog-start"]
    run.on_prolog("prolog-finish", "site", 2.0)
    assert posted(run) == ["alloc", "prolog-start", "start", "finish", "release", "prolog-finish"]
    assert run.job.runtime.jobtap.posted[3] == ("finish", {"status": 768})
    run.job_ended()  # ended by our finish: nothing more
    assert len(posted(run)) == 6


def test_a_prolog_finish_seen_while_the_eventlog_is_read_is_not_lost():
    from flux_delegate.jobmanager.localrun import LocalRun

    run = LocalRun(Job(), 0)
    run.resuming = []
    snapshot = [prolog("prolog-start", "delegate", 1.0), prolog("prolog-start", "site", 1.1)]
    # The site's prolog finishes after the eventlog was read, before its
    # answer is handled; one already in the snapshot is not counted twice.
    run.on_prolog("prolog-start", "site", 1.1)
    run.on_prolog("prolog-finish", "site", 2.0)
    run.resume(snapshot, running=True)
    assert posted(run) == ["start", "finish", "release", "prolog-finish"]


def test_a_job_ended_while_held_has_our_prolog_closed():
    from flux_delegate.jobmanager.localrun import LocalRun

    run = LocalRun(Job(), 0)
    run.hold()
    run.on_prolog("prolog-start", "site", 1.0)
    run.job_ended()
    assert posted(run) == ["prolog-start", "prolog-finish"]
    run.resuming = []
    run.resume([prolog("prolog-start", "delegate", 1.0)], running=False)
    assert posted(run)[-1] == "prolog-finish" and len(posted(run)) == 3
