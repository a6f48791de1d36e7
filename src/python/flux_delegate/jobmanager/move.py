"""Moving a pending job: a delegated job still pending on its target goes
to another candidate that would now start it sooner by more than
[delegate-policy] move-margin, at most move-max times, as HTCondor's
JobRouter reroutes an idle job, and Slurm federation leaves a job with
the sibling that can start it first.

Every move-interval the Mover looks at the jobs it may move: following a
remote job not yet allocated, chosen by a policy that estimates starts
(earliest_start), moved fewer than move-max times.  Each target's plan is
read once for all of them (schedule.TargetSchedule).  The job's start
where it is: where its target's plan puts its remote job among the
others; elsewhere: fitted in behind what is there.

Exactly once.  A Move first holds the remote job (urgency 0), which a
target's job-manager refuses once the job has resources: a job that
started meanwhile stays where it is.  Held, it waits HOLD_SETTLE for an
allocation already on its way from the target's scheduler to show in the
remote eventlog after the hold (which only stops new ones), and only then posts
'delegate-move' (both targets, both estimates) and cancels the remote job
with a note of its own (MOVE_NOTE).  The job is submitted elsewhere once
the remote eventlog has that cancel through to the job's clean-up: a
remote job that got no "start" never ran.  After a reload mid-move the
note is found at the remote job's end, and the job chooses again.
"""

import errno
import syslog

from ..jobspec import requeue_allowed
from .phases import FOLLOWING, SUBMITTING
from .reactor import Timer, guard, log

#: The note of the cancel that moves a remote job (RemoteOutcome.exception):
#: the remote job ended because it was moved, not as the job's end.
MOVE_NOTE = "delegate-move: "

#: Seconds a held remote job is watched for an allocation its scheduler
#: had already made when the hold came (it answers the hold's cancel of
#: its request at once; the answer of an allocation made just before is on
#: its way).
HOLD_SETTLE = 1.0


def is_move_cancel(exception):
    """Whether a remote job's fatal exception is the cancel of a move."""
    note = (exception or {}).get("note")
    return (exception or {}).get("type") == "cancel" and str(note).startswith(MOVE_NOTE)


def movable(job, settings):
    """Whether the job may be moved now."""
    outcome = job.outcome
    return (
        job.phase == FOLLOWING
        and job.moving is None
        and job.moves < settings.most
        and job.candidate is not None
        and job.target is not None
        and job.target.kind == "policy"
        and "estimate" in job.runtime.policy_metrics(job.target.policy)
        and job.remote is not None
        and not job.remote.lost
        and job.verified is job.remote
        and not (outcome.allocated or outcome.started or outcome.exception or outcome.ended)
    )


def elsewhere(job):
    """The job's other candidates (not this instance: a job sent away has
    alloc-bypass set, and stays away) over connections that are up."""
    return [
        c
        for c in job.untried
        if not c.local and c.remote is not None and not c.remote.lost and c.uri != job.uri
    ]


class Mover:
    """The sweep, every move-interval, over the jobs one load follows."""

    def __init__(self, runtime, settings):
        self.runtime = runtime
        self.settings = settings
        self.timer = None
        self.sweeping = False
        self.counts = {"sweeps": 0, "moves": 0, "stayed": 0, "given-up": 0}

    def configure(self, settings):
        self.settings = settings
        self.arm()

    def arm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.settings.on and not self.runtime.unloaded:
            self.timer = Timer(
                self.settings.interval, guard(self.sweep, owner=self.runtime), self.runtime
            )

    def stop(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def sweep(self):
        """Read the plans the movable jobs need, then decide for each."""
        self.timer = None
        jobs = [j for j in self.runtime.jobs.values() if movable(j, self.settings)]
        if not jobs or self.sweeping:
            self.arm()
            return
        self.counts["sweeps"] += 1
        self.sweeping = True
        schedules = {}
        for job in jobs:
            for remote in [job.remote] + [c.remote for c in elsewhere(job)]:
                schedules[id(remote.schedule)] = remote.schedule
        plans = {}

        def planned(key, plan):
            plans[key] = plan
            if len(plans) == len(schedules):
                done()

        def done():
            if not self.sweeping:
                return
            self.sweeping = False
            deadline.cancel()
            for job in jobs:
                if movable(job, self.settings):
                    self.consider(job, plans)
            self.arm()

        deadline = Timer(self.runtime.preflight_timeout, guard(done, owner=self.runtime))
        for key, schedule in schedules.items():
            schedule.get(lambda plan, error, key=key: planned(key, plan))

    def consider(self, job, plans):
        """Move the job if another candidate would start it sooner by more
        than move-margin; unknown anywhere means no move."""
        request = job.choosing.request_for_estimate()
        here_plan = plans.get(id(job.remote.schedule))
        if request is None or here_plan is None:
            return
        here = here_plan.start_of(int(job.remote_id))
        if here is None or here.seconds is None:
            return
        best = None
        for c in elsewhere(job):
            plan = plans.get(id(c.remote.schedule))
            if plan is None:
                continue
            estimate, fit = plan.estimate(request)
            if estimate.seconds is None:
                continue
            key = (estimate.start, estimate.idle or 0)
            if best is None or key < best[0]:
                best = (key, c, estimate, fit)
        if best is None:
            return
        _, destination, there, fit = best
        if here.start - there.start <= self.settings.margin:
            return
        # Planned in there now, so that the next job of this sweep counts it.
        destination.remote.schedule.reserve(request, fit)
        Move(self, job, destination, here.seconds, there.seconds, request).start()


class Move:
    """One job's move: hold, settle, cancel, and, once the cancel is
    through, submit to the destination (Releasing.conclude calls
    finish_move)."""

    def __init__(self, mover, job, destination, here, there, request):
        self.mover = mover
        self.job = job
        self.destination = destination
        self.here = here  # seconds from now where it is
        self.there = there  # and at the destination
        self.request = request
        self.remote = job.remote
        self.remote_id = job.remote_id
        self.old_urgency = None
        self.held = False  # its hold answered
        self.hold_seen = False  # and seen in the remote eventlog
        self.settling = False
        self.canceling = False
        self.timer = None

    def start(self):
        job = self.job
        job.moving = self
        log(
            syslog.LOG_INFO,
            f"{job.name}: {self.destination.describe()} would start it in {self.there:g}s,"
            f" {job.uri} in {self.here:g}s: holding {self.remote_id.f58} to move it",
        )
        self.remote.request(
            1024,
            lambda h: h.rpc("job-manager.urgency", {"id": int(self.remote_id), "urgency": 0}),
            self.on_held,
            job,
        )

    def current(self):
        return self.job.moving is self and self.job.phase == FOLLOWING

    def on_held(self, future):
        try:
            self.old_urgency = future.get().get("old_urgency")
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # it has resources there now
                self.stay("it was allocated there meanwhile")
            else:
                self.stay(f"cannot hold it there: {exc.strerror or exc}", counted="given-up")
            return
        except (ValueError, AttributeError):
            pass  # held (no error), with an answer not understood
        if not self.current():
            self.release_hold()
            return
        self.held = True
        # The hold shows in the remote eventlog; if it does not (a watch
        # that stopped answering), the job stays.
        self.timer = Timer(
            self.job.runtime.submit_timeout,
            guard(lambda: self.stay("its hold did not show there", "given-up"), self.job),
            self.job.runtime,
        )
        self.maybe_settle()

    def on_remote_event(self, event):
        """An event of the remote job while it is being moved."""
        if event.name == "alloc" and not self.canceling:
            self.stay("it was allocated there meanwhile")
        elif event.name == "urgency" and (event.context or {}).get("urgency") == 0:
            self.hold_seen = True
            self.maybe_settle()

    def maybe_settle(self):
        """Held, and the hold seen in the remote eventlog (what the target
        allocates after it shows after it): HOLD_SETTLE from now."""
        if self.held and self.hold_seen and not self.settling and self.current():
            self.settling = True
            self.timer.cancel()
            self.timer = Timer(HOLD_SETTLE, guard(self.settled, self.job), self.job.runtime)

    def settled(self):
        self.timer = None
        if not self.current():
            return
        job = self.job
        if job.outcome.allocated:
            self.stay("it was allocated there meanwhile")
            return
        self.canceling = True
        context = {
            "from": self.place(job.candidate, job.uri, self.here),
            "to": self.place(self.destination, self.destination.uri, self.there),
            "jobid": int(self.remote_id),
            "move": job.moves + 1,
        }
        job.runtime.jobtap.post_event(job.id, "delegate-move", context)
        reason = f"{MOVE_NOTE}moved to {self.destination.name}"
        job.cancel_remote(reason)

    @staticmethod
    def place(candidate, uri, seconds):
        place = {"uri": uri, "estimate": seconds}
        if candidate is not None and candidate.label:
            place["label"] = candidate.label
        return place

    def stay(self, why, counted="stayed"):
        """The job stays where it is."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.job.moving is self:
            self.job.moving = None
        self.mover.counts[counted] += 1
        log(syslog.LOG_INFO, f"{self.job.name}: not moved: {why}; it stays on {self.job.uri}")
        if counted == "given-up" or not self.job.outcome.allocated:
            self.release_hold()
        if self.job.phase == FOLLOWING:
            self.job.starting.start()  # allocated while it was to move

    def release_hold(self):
        """Give the remote job its urgency back (a job allocated meanwhile
        refuses it, and needs it no more)."""
        if self.old_urgency is None or self.remote.lost or self.canceling:
            return
        urgency, self.old_urgency = self.old_urgency, None
        self.remote.request(
            1024,
            lambda h: h.rpc(
                "job-manager.urgency", {"id": int(self.remote_id), "urgency": urgency}
            ),
            lambda f: None,
            self.job,
        )


def finish_move(job, move):
    """The remote job ended by the cancel of a move (move: the Move, or
    None after a reload mid-move): submit the job to its destination, or
    choose again.  A remote job that got as far as starting ran in part
    there: it goes on only if the job may be requeued (-S
    delegate-requeue), as after a node failure."""
    outcome = job.outcome
    where = f"remote job {job.remote_id.f58} on {job.uri}"
    if outcome.started and not requeue_allowed(job.jobspec):
        job.fail(
            f"{where} started as it was being moved, and the move's cancel"
            " stopped it; not run again elsewhere: the job opted out"
            " (delegate-requeue=false)"
        )
        return
    job.following.stop()
    job.moves += 1
    job.phase = SUBMITTING
    if move is None or job.remote_spec is None:
        log(syslog.LOG_INFO, f"{job.name}: {where} was canceled to move it: choosing again")
        job.choosing.start()
        return
    move.mover.counts["moves"] += 1
    rest = [c for c in job.untried if c is not move.destination]
    job.untried = [move.destination] + rest + [job.candidate]
    job.failures = []
    log(
        syslog.LOG_INFO,
        f"{job.name}: {where} canceled (it never started): moving to"
        f" {move.destination.describe()}",
    )
    job.submitting.try_next()

