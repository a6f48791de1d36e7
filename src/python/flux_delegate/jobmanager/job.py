"""A delegated job: its state, and the hand-over between the phases of
its life, each a unit of its own.

A job taken on for delegation (local job id L; its remote job, R) goes
through these phases (phases.py); where each lives:

  waiting     (waiting.py: Waiting) held with the dependency "delegated"
              (job.dependency.delegate: a bad value is rejected at submit).
              A job with no other dependency goes on as soon as it is
              accepted (job.new: early-handoff), while the job-manager
              commits its eventlog.  Otherwise other dependencies
              (afterok:...) are honoured: the handler reads the job's
              eventlog from the job-manager and waits until "delegated" is
              the only dependency left.
  submitting  (choosing.py: Choosing) the target is resolved, the
              candidates asked (pre-flight) and ordered (policy); this
              instance, with include-local, may keep the job.
              (submitting.py: Submitting, Submission) the remote instance
              is connected (one connection per URI, reused), and the
              jobspec submitted there without the local dependencies and
              delegation attributes, with L recorded in it
              (system.delegate-origin).  (failover.py: Failover) a
              candidate that fails for sure gives way to the next
              (delegate-failover).
  recovering  (recovery.py: Recovery) a submit's answer was lost (restart,
              reload mid-submit, a broken connection): the target is
              searched for R by its origin before submitting again.
  following   (following.py: Following) R exists: L got a "delegated"
              event {jobid: R, uri}, and R's eventlog is watched.  L is
              pending (DEPEND) while R is; from R's alloc L runs too
              (starting.py: Starting), its output copied as R writes it
              (liveoutput.py).  On reload (resuming.py: Resuming) the
              "delegated" event is found again and R followed again.
              Contact lost is sought again for up to reconnect-timeout.  R
              ended by an allocation failure: the next candidate may take
              the job (Failover).  A pending R may be moved (move.py).
  releasing   (releasing.py: Releasing) R finished: its output (within
              output-limit) and R are read from the target
              (output.Collect) and written to L's KVS directory as L's own,
              L still pending; then L is released and run through to its
              end by the plugin's own events (alloc-bypass,
              localrun.LocalRun), its R naming R's nodes and its finish
              carrying R's wait status.
  ended       nothing is left to do.  R failed with an exception: L got a
              DelegationFailure exception naming R and the exception; any
              failure before R exists: a severity 0 DelegationFailure whose
              note says what went wrong and with which URI.  'flux cancel L'
              cancels R (cancel.RemoteCancel); R canceled in the target
              ends L with DelegationFailure.

Each unit holds nothing but the job: the job's state is here, so that a
phase can hand over to the next by a call, and a reload can rebuild it.
"""

import syslog

import flux.constants
from flux.job import JobID

from ..eventlog import RemoteOutcome, local_end_reason
from ..names import EXCEPTION_TYPE
from .cancel import RemoteCancel
from .choosing import Choosing
from .failover import Failover
from .following import Following
from .phases import ENDED, FOLLOWING, RECOVERING, RELEASING, WAITING
from .reactor import Timers, log
from .releasing import Releasing
from .resuming import Resuming
from .showing import Showing
from .starting import Starting
from .submitting import Submitting
from .waiting import Waiting

class DelegatedJob:
    """One job taken on for delegation: its state, and the hand-over
    between its phases (each a unit of its own, above).  The jobtap
    callbacks for the job enter here (entry.py's handler table)."""

    def __init__(self, runtime, args, target, doomed=None):
        self.runtime = runtime  # the load that took it on
        self.id = int(args["id"])
        self.userid = args.get("userid")
        self.urgency = args.get("urgency")
        self.t_submit = args.get("t_submit")
        self.jobspec = args["jobspec"]
        self.target = target
        # Why the job cannot be delegated (a bad target), applied once its
        # eventlog shows it was never delegated before: in job.new the job
        # is NEW and cannot take an exception yet, and at plugin load it
        # may have been delegated under a registry that has changed.
        self.doomed = doomed
        # Until its submit is committed (DEPEND) a new job's events wait in
        # the job-manager; what would end or release it waits here (on_depend).
        self.accepted = args.get("state") != flux.constants.FLUX_JOB_STATE_NEW
        self.when_accepted = []
        self._phase = WAITING
        # Its timers: "identity" (the identity check's answer, when
        # reattaching), "submit-retry" (a target still starting) and
        # "run" (its run goes on, once its events are handled): all canceled
        # once it is inactive.
        self.timers = Timers(runtime)
        self.canceled_reason = None
        self.waiting_state()
        self.remote_state()
        self.release_state()
        # Its phases, each acting on the state above.
        self.waiting = Waiting(self)
        self.choosing = Choosing(self)
        self.submitting = Submitting(self)
        self.failover = Failover(self)
        self.following = Following(self)
        self.starting = Starting(self)
        self.releasing = Releasing(self)
        self.showing = Showing(self)
        self.resuming = Resuming(self)

    def waiting_state(self):
        # Known at job.new to have nothing to look for in its eventlog (a
        # new job whose only dependency is this one): goes on without the
        # look when its turn comes (Waiting.check_ready).
        self.fresh = False
        self.checking = False  # its eventlog being read
        self.recheck = False  # to be read again when it comes

    def remote_state(self):
        """Choosing, submitting, following."""
        self.uri = None
        self.remote = None  # RemoteInstance, the connection to uri
        self.remote_spec = None  # the jobspec as sent (Choosing.on_J)
        self.candidate = None
        self.untried = []  # candidates left to submit to, in order
        self.failures = []  # (candidate, reason) of those that failed
        self.submission = None  # the submit whose answer counts
        self.remote_id = None
        self.outcome = RemoteOutcome()
        self.watch = None
        self.reconnecting = None  # Retrying, while following
        self.lost_reason = None
        self.known_remote = {}  # uri -> ids of remote jobs it had there
        # The connection on which remote_id is known to be this job's (the
        # one it was submitted or found on, or checked over): on any other,
        # the id may belong to a stranger (a target replaced at its URI
        # numbers its jobs from the same start), so it is checked first.
        self.verified = None
        self.identity_check = None  # the one whose answer counts
        # Moving it while it is pending on its target (move.py): the Move
        # under way, and how many were made.
        self.moving = None
        self.moves = 0
        # What 'flux jobs' shows of its remote job (showing.py).
        self.annotation = None

    def release_state(self):
        """Releasing: what it takes from its remote job (output.Collect),
        and its run (localrun.LocalRun)."""
        self.collecting = None
        self.remote_R = None  # its remote job's R, from the journal
        self.storing = None  # the Collect whose result is being written
        self.stored = None  # the Collect whose result is in the KVS
        self.released = False  # its dependency removed (release_now)
        # Released as its remote job was allocated (starting.py): running
        # here while it does; start_token: the start under way.
        self.runs_with_remote = False
        self.start_token = None
        self.wait_status = None  # the remote job's, that it ends with
        self.R = None  # the local R given at SCHED (alloc-bypass)
        self.R_given = False
        self.bypass_set = False  # alloc-bypass set by this load
        self.stayed = False  # runs here as an ordinary job (stay_local)
        self.run = None
        self.live = None  # liveoutput.LiveOutput, while it runs here

    @property
    def name(self):
        return JobID(self.id).f58

    @property
    def phase(self):
        return self._phase

    @phase.setter
    def phase(self, value):
        self._phase = value
        if value in (FOLLOWING, RELEASING, ENDED, RECOVERING):
            # Its remote job exists, or never will; or it waits (Recovery)
            # for a target that may take minutes to answer.
            self.runtime.admission.leave(self)

    @property
    def origin(self):
        """What the remote job records of this one (ORIGIN_ATTRIBUTE)."""
        return {"jobid": self.id, "t_submit": self.t_submit, "host": self.runtime.hostname}

    # -- failure and the end -----------------------------------------------

    def fail(self, what, cancel_remote=True):
        """End the local job with a DelegationFailure (severity 0).  The
        remote job is canceled unless cancel_remote is False (it is not
        this job's, or it is gone)."""
        if self.phase == ENDED:
            log(syslog.LOG_DEBUG, f"{self.name}: after end: {what}")
            return
        previous, self.phase = self.phase, ENDED
        self.following.stop()
        self.releasing.stop_collecting()
        if (
            cancel_remote
            and previous == FOLLOWING
            and not self.outcome.ended
            and self.remote is not None
            and not self.remote.lost
        ):
            # Whatever went wrong, the remote job must not run on alone.
            self.cancel_remote(f"delegation failed: {what}")
        # Remote text may hold NULs or lone surrogates (a JSON escape).
        what = str(what).replace("\0", "\\0")
        what = what.encode("utf-8", "backslashreplace").decode("utf-8")
        log(syslog.LOG_ERR, f"{self.name}: {what}")
        self.once_accepted(
            lambda: self.runtime.jobtap.raise_exception(
                self.id, EXCEPTION_TYPE, 0, f"delegate: {what}"
            )
        )

    def once_accepted(self, action):
        """Do action now, or once the job is in DEPEND (on_depend): a job
        handed on early (Waiting.on_new) can fail or end before that."""
        if self.accepted:
            action()
        else:
            log(syslog.LOG_DEBUG, f"{self.name}: not in DEPEND yet: the end waits for it")
            self.when_accepted.append(action)

    def cancel_remote(self, reason):
        """Cancel the remote job: now, or, if the connection is down, as soon
        as it is back.  It must not run on alone."""
        RemoteCancel(self, reason).start()

    # -- what its target's connection and journal tell it (Following) -------

    def connection_lost(self, remote, reason):
        self.following.connection_lost(remote, reason)

    def on_journal_event(self, remote_id, event, R=None):
        self.following.on_journal_event(remote_id, event, R)

    def journal_ended(self, remote):
        self.following.journal_ended(remote)

    # -- jobtap callbacks for this job (entry.py's handler table) -------------

    def on_new(self, args):
        self.waiting.on_new(args)

    def on_depend(self, args):
        if not self.bypass_set and not self.choosing.may_stay and not self.stayed:
            self.releasing.set_bypass()
        self.accepted = True
        actions, self.when_accepted = self.when_accepted, []
        for action in actions:
            action()
        self.waiting.check_ready()
        return self.showing.answer()  # of a job delegated from job.new, if any

    def on_update(self, args):
        """job.update: a jobspec update (annotate()'s, or a user's)."""
        return self.showing.answer()

    def on_dependency_removed(self, args):
        self.waiting.check_ready()

    def on_urgency(self, args):
        """A held job (urgency 0) is not delegated until it is released."""
        self.urgency = args.get("urgency", self.urgency)
        if self.urgency != 0:
            self.waiting.check_ready()

    def on_sched(self, args):
        return self.releasing.on_sched(args)

    def on_run(self, args):
        return self.releasing.on_run(args)

    def on_prolog(self, args):
        self.releasing.on_prolog(args)

    def on_cleanup(self, args):
        """The local job ends.  If that is not our doing, the remote job
        (or the submit in flight) is canceled: nothing runs on its own."""
        if self.run is not None:
            self.run.job_ended()  # our prolog closed, if the end was not ours
        if self.live is not None:
            self.live.close()  # what was copied kept, the namespace gone
        if self.annotation is not None:
            self.annotation = dict(self.annotation, state="ended")
        if self.phase in (RELEASING, ENDED):
            self.phase = ENDED
            self.releasing.stop_collecting()
            return self.showing.answer()
        reason = local_end_reason(args, self.name)
        previous, self.phase = self.phase, ENDED
        self.canceled_reason = reason
        self.releasing.stop_collecting()
        if previous == FOLLOWING:
            self.following.stop()
            self.cancel_remote(reason)
        return self.showing.answer()

    def on_inactive(self, args):
        self.following.stop()
        self.timers.cancel()
        self.runtime.jobs.pop(self.id, None)
        self.runtime.admission.leave(self)
