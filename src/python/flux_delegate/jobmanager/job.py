"""A delegated job: the state machine from submit to the end of its remote
twin.

A job taken on for delegation (local job id L; its remote job, R) goes
through these phases (phases.py):

  waiting     held with the dependency "delegated" (job.dependency.delegate:
              a bad value is rejected at submit).  A job with no other
              dependency goes on as soon as it is accepted (job.new:
              early-handoff), while the job-manager commits its eventlog.
              Otherwise other dependencies (afterok:...) are honoured: the
              handler reads the job's eventlog from the job-manager and
              waits until "delegated" is the only dependency left.  An
              eventlog with a "delegated" event (plugin reload, instance
              restart) goes on following R; one with a submit whose answer
              was lost, recovering.
  submitting  the target is resolved, the candidates asked (pre-flight) and
              ordered (policy), the remote instance connected (one
              connection per URI, reused), and the jobspec submitted there
              without the local dependencies and delegation attributes, with
              L recorded in it (system.delegate-origin).  A candidate that
              fails for sure gives way to the next (delegate-failover).
  recovering  a submit's answer was lost (restart, reload mid-submit, a
              broken connection): the target is searched for R by its origin
              before submitting again (Recovery).
  following   R exists: L got a "delegated" event {jobid: R, uri}, and R's
              eventlog is watched.  L stays pending (DEPEND), so a restart
              of this instance neither cancels nor forgets it: on reload the
              "delegated" event is found again and R followed again.  Contact
              lost is sought again for up to reconnect-timeout.  R ended by
              an allocation failure: the next candidate may take the job
              (submitting again).
  releasing   R finished: its output (within output-limit) and R are read
              from the target (output.Collect) and written to L's KVS
              directory as L's own (guest.output, with an exec eventlog),
              L still pending; then L is released and run through to its
              end by the plugin's own events, without resources, processes
              or job-exec (alloc-bypass, localrun.LocalRun), its R naming
              R's nodes and its finish carrying R's wait status, so 'flux
              job attach L' shows R's output and 'flux job status L' gives
              R's exit code.
  ended       nothing is left to do.  R failed with an exception: L got a
              DelegationFailure exception naming R and the exception; any
              failure before R exists: a severity 0 DelegationFailure whose
              note says what went wrong and with which URI.  'flux cancel L'
              cancels R (RemoteCancel); R canceled in the target ends L with
              DelegationFailure.
"""

import errno
import functools
import json
import os
import syslog
import time

import flux
import flux.constants
import flux.job
import flux.kvs
from flux.core.inner import ffi, lib
from flux.future import Future
from flux.job import JobID

from ..eventlog import (
    RemoteOutcome,
    delegations,
    describe_remote_exception,
    find_delegation,
    interrupted_submit,
    local_end_reason,
    outstanding_dependencies,
)
from ..estimate import request_of_jobspec
from ..jobspec import delegation_is_only_dependency, local_R, release_updates, requeue_allowed
from ..names import DEPENDENCY, EXCEPTION_TYPE
from ..policies import (
    Candidate,
    JobView,
    PolicyError,
    apply_policy,
    job_include_local,
    no_target_message,
)
from ..registry import Cluster
from ..targets import SELF_DELEGATION
from ..text import shown
from .cancel import RemoteCancel
from .connections import CONNECTION_ERRORS, HelperAnswer, submit_on_own_connection
from .localrun import LocalRun, exec_eventlog
from .move import finish_move, is_move_cancel
from .output import Collect
from .phases import ENDED, FOLLOWING, RECOVERING, RELEASING, SUBMITTING, WAITING
from .preflight import Preflight, estimate_candidates, reserve_choice
from .reactor import Timer, Timers, answered, guard, log, then
from .recovery import Recovery
from .remote import answer_of, check_identity, payload_size
from .resolve import resolve_target
from .retry import Retrying
from .watch import EventlogWatch


class Submission:
    """One submit of a job to a target, and what to do with its answer,
    whenever it comes: after the job-manager's own timeout, a job the target
    created anyway is canceled, so that no remote job runs that nobody
    follows.  After the handler that sent it was unloaded, the job is left
    for the reloaded handler to find (Recovery)."""

    def __init__(self, job, remote, uri):
        self.job = job
        self.remote = remote
        self.uri = uri
        self.owner = self.job.runtime
        self.answered = False

    def send(self):
        # Wall-clock: a search for what it made (Recovery) compares it
        # with the target's t_submit.
        self.sent = time.time()
        spec = json.dumps(self.job.remote_spec)
        self.timer = Timer(
            max(0.0, self.job.submit_deadline - time.monotonic()),
            guard(lambda: self.job.on_submit_timeout(self), self.job, self.owner),
            self.owner,
        )
        nbytes = payload_size(spec)
        if self.remote.oversized(nbytes):
            # Too large to write without blocking even to a target that
            # reads: sent by a helper thread, over a connection of its own.
            self.owner.log(
                syslog.LOG_INFO,
                f"{self.job.name}: jobspec of {nbytes} bytes: submitting it to"
                f" {self.uri} over a connection of its own",
            )
            timeout = max(1.0, self.job.submit_deadline - time.monotonic())
            self.outgoing = self.owner.helpers.start(
                "submit",
                lambda task: submit_on_own_connection(self.uri, spec, timeout, task),
                lambda result: self.on_answer(HelperAnswer(result)),
            )
            return
        # Not guarded: the answer must be handled even after an unload.
        self.outgoing = self.remote.request(
            nbytes,
            lambda handle: flux.job.submit_async(handle, spec),
            self.on_answer,
            guarded=False,
        )

    def on_answer(self, future):
        try:
            answered(future)
            self.answered = True
            self.timer.cancel()
            try:
                remote_id = answer_of(future.get_id)
            except OSError as exc:
                if not self.owner.unloaded:
                    sent = getattr(future, "sent", True)
                    guard(self.job.on_submit_error, self.job, self.owner)(self, exc, sent)
                return
            job = self.job
            current = job.submission is self and job.phase == SUBMITTING
            if current and not self.owner.unloaded:
                guard(job.on_submitted, job, self.owner)(self, remote_id)
                return
            if current:
                # Unloaded mid-submit: the reloaded plugin finds this job
                # (Recovery) and follows it; canceling it would fail the
                # local job.  (A job ended meanwhile is withdrawn below.)
                self.owner.log(
                    syslog.LOG_INFO,
                    f"{job.name}: {JobID(remote_id).f58} created on {self.uri}"
                    " after the plugin was unloaded; left for it to find",
                )
                return
            if job.phase == ENDED and job.canceled_reason:
                why = job.canceled_reason
            else:
                why = "the target answered after the submit timed out"
            self.withdraw(JobID(remote_id), why)
        except Exception:  # pylint: disable=broad-except
            self.owner.log_exception("submit answer")

    def withdraw(self, remote_id, why):
        """Cancel a remote job nobody will follow."""
        self.owner.log(
            syslog.LOG_INFO,
            f"{self.job.name}: canceling {remote_id.f58} on {self.uri}: {why}",
        )
        self.withdrawn = self.remote.request(
            1024,
            lambda h: flux.job.cancel_async(h, remote_id, f"delegate: {why}"),
            answered,
            guarded=False,
        )


class DelegatedJob:
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
        # Known at job.new to have nothing to look for in its eventlog (a
        # new job whose only dependency is this one): goes on without the
        # look when its turn comes (check_ready).
        self.fresh = False
        self._phase = WAITING
        self.uri = None
        self.remote = None
        self.candidate = None
        self.untried = []  # candidates left to submit to, in order
        self.failures = []
        self.remote_id = None
        self.outcome = RemoteOutcome()
        self.watch = None
        # Its timers: "identity" (the identity check's answer, when
        # reattaching), "submit-retry" (a target still starting) and
        # "run" (its run goes on, once its events are handled): all canceled
        # once it is inactive.
        self.timers = Timers(runtime)
        self.reconnecting = None  # Retrying, while following
        self.lost_reason = None
        self.checking = False
        self.recheck = False
        self.canceled_reason = None
        self.known_remote = {}  # uri -> ids of remote jobs it had there
        # The connection on which remote_id is known to be this job's (the
        # one it was submitted or found on, or checked over): on any other,
        # the id may belong to a stranger (a target replaced at its URI
        # numbers its jobs from the same start), so it is checked first.
        self.verified = None
        self.identity_check = None  # the one whose answer counts
        # Releasing: what it takes from its remote job (output.Collect),
        # and its run (localrun.LocalRun).
        self.collecting = None
        self.remote_R = None  # its remote job's R, from the journal
        self.storing = None  # the Collect whose result is being written
        self.stored = None  # the Collect whose result is in the KVS
        self.released = False  # its dependency removed (release_now)
        self.R = None  # the local R given at SCHED (alloc-bypass)
        self.R_given = False
        self.bypass_set = False  # alloc-bypass set by this load
        self.stayed = False  # runs here as an ordinary job (stay_local)
        self.run = None
        # Moving it while it is pending on its target (move.py): the Move
        # under way, and how many were made.
        self.moving = None
        self.moves = 0

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

    # -- failure -----------------------------------------------------------

    def fail(self, what, cancel_remote=True):
        """End the local job with a DelegationFailure (severity 0).  The
        remote job is canceled unless cancel_remote is False (it is not
        this job's, or it is gone)."""
        if self.phase == ENDED:
            log(syslog.LOG_DEBUG, f"{self.name}: after end: {what}")
            return
        previous, self.phase = self.phase, ENDED
        self.stop_following()
        self.stop_collecting()
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
        handed on early (on_new) can fail or end before that."""
        if self.accepted:
            action()
        else:
            log(syslog.LOG_DEBUG, f"{self.name}: not in DEPEND yet: the end waits for it")
            self.when_accepted.append(action)

    # -- waiting for the other dependencies --------------------------------

    def on_new(self, args):
        """job.new: the job is accepted.  At submit, one whose only
        dependency is this one (none other in its jobspec, where flux's
        dependency schemes come from) goes on now (early-handoff): nothing
        can have been delegated before, and its eventlog, being committed,
        has nothing to say yet.  The rest wait for DEPEND (check_ready)."""
        if (
            args.get("state") != flux.constants.FLUX_JOB_STATE_NEW
            or not self.runtime.early_handoff
            or self.phase != WAITING
            or self.urgency == 0
            or self.doomed is not None
            or not delegation_is_only_dependency(self.jobspec)
        ):
            return
        self.fresh = True
        if self.runtime.admission.admit(self):
            self.runtime.counts["early"] += 1
            self.start()
        # else its turn comes in a burst (Admission): check_ready()

    def check_ready(self):
        """Read the job's eventlog from the job-manager (asynchronously):
        delegate when "delegated" is the only dependency left, or re-follow
        the remote job if this job was delegated before (plugin reload,
        instance restart)."""
        if self.phase != WAITING:
            return
        if self.urgency == 0 and self.doomed is None:
            return  # held: on_urgency checks again when released
        if self.checking:
            self.recheck = True
            return
        if not self.runtime.admission.admit(self):
            return  # its turn comes (Admission)
        if self.fresh:
            self.runtime.counts["early-queued"] += 1
            self.start()
            return
        self.checking = True
        future = self.runtime.handle.rpc(
            "job-manager.getattr", {"id": self.id, "attrs": ["eventlog"]}
        )
        then(future, self.on_eventlog, job=self)

    def on_eventlog(self, future):
        self.checking = False
        eventlog = future.get()["eventlog"]
        if self.phase != WAITING:
            return
        previous = find_delegation(eventlog)
        if previous is not None:
            # Delegated before (plugin reload, restart): follow it, even if
            # its target would not parse any more (registry changed).
            self.resume(previous)
        elif interrupted_submit(eventlog) is not None:
            # A submit was sent and its answer lost (restart, reload): the
            # target may have the job.  Look before submitting again.  The
            # submission may have sent again for up to submit-timeout (a
            # target still starting), each send pending up to submit-timeout.
            interrupted = interrupted_submit(eventlog)
            self.phase = RECOVERING
            for uri, jobid in delegations(eventlog):
                self.known_remote.setdefault(uri, set()).add(jobid)
            Recovery(
                self,
                interrupted,
                interrupted["timestamp"] + 2 * self.runtime.submit_timeout,
                known=self.known_remote.get(interrupted["uri"], ()),
            ).start()
        elif self.doomed is not None:
            self.fail(self.doomed)
        elif not (outstanding_dependencies(eventlog) - {DEPENDENCY}):
            self.runtime.counts["at-depend"] += 1
            self.start()
        else:
            self.runtime.admission.leave(self)  # waits for its other dependencies
            if self.recheck:
                self.recheck = False
                self.check_ready()

    # -- choosing a target --------------------------------------------------

    def start(self):
        """Fetch the job's environment (only in J), then choose and submit.
        The job-manager reads the KVS itself: job-info would first check
        that the asker owns the job, one more hop for nothing here."""
        self.phase = SUBMITTING
        self.look_up_own("J", self.on_J)

    def look_up_own(self, key, callback):
        """Read key of the job's KVS directory (the job-manager's own
        lookup); callback(value) with it (a cffi char *, valid during the
        call)."""
        future = Future(
            flux.kvs.RAW.flux_kvs_lookup(
                self.runtime.handle, ffi.NULL, 0, f"{JobID(self.id).kvs}.{key}"
            )
        )

        @functools.wraps(callback)  # named after it in a handler error
        def looked_up(future):
            value = ffi.new("char *[1]")
            if lib.flux_kvs_lookup_get(future.pimpl.handle, value) < 0:
                raise OSError(ffi.errno, f"cannot read the job's {key}: {os.strerror(ffi.errno)}")
            callback(value[0])

        then(future, looked_up, job=self)

    def on_J(self, J):
        # J is the signed original jobspec; unwrapping it is local work.
        original = lib.flux_unwrap_string(J, False, ffi.NULL, ffi.NULL)
        if original == ffi.NULL:
            raise OSError(ffi.errno, "cannot unwrap the job's J")
        try:
            spec = json.loads(ffi.string(original).decode())
        finally:
            lib.free(original)
        environment = spec.get("attributes", {}).get("system", {}).get("environment")
        self.remote_spec = self.runtime.remote_jobspec(self.jobspec, environment, self.origin)
        target = self.target
        if target.kind == "policy":
            candidates = [Candidate(c) for c in self.runtime.registry.clusters]
            if self.may_stay:
                candidates.insert(0, Candidate(self.this_instance()))
            self.preflight(candidates)
        elif target.kind == "label":
            self.preflight([Candidate(target.cluster)])
        else:
            resolve_target(self, target, self.on_resolved, self.fail)

    @property
    def may_stay(self):
        """Whether the job may yet run here, in the instance it was
        submitted to (include-local, a policy choosing): not once a
        target was chosen."""
        if self.target is None or self.target.kind != "policy" or self.candidate is not None:
            return False
        if self.moves:
            return False  # sent away before: alloc-bypass is set
        if self.phase not in (WAITING, SUBMITTING):
            return False
        return job_include_local(self.jobspec, self.runtime.include_local)

    def this_instance(self):
        """This instance as a candidate (include-local)."""
        return Cluster(self.runtime.local_uri or "local", label="local", origin="local")

    def stay_local(self):
        """This instance would start the job soonest: it runs here as an
        ordinary job, scheduled here (no alloc-bypass), once its
        dependency is removed.  The handler has no more to do with it."""
        self.phase = ENDED
        self.stayed = True
        log(syslog.LOG_INFO, f"{self.name}: stays here: this instance starts it soonest")
        self.once_accepted(lambda: self.runtime.jobtap.dependency_remove(self.id, DEPENDENCY))

    def request_for_estimate(self):
        """The job's resources and time limit as a plan places them
        (estimate.Request), or None if its jobspec says otherwise."""
        try:
            return request_of_jobspec(self.jobspec)
        except (ValueError, TypeError, AttributeError):
            return None

    def on_resolved(self, uri):
        """An explicit URI (or job id): the one candidate, named by its
        registry label if the registry knows it."""
        if self.runtime.is_this_instance(uri):
            self.fail(f"{SELF_DELEGATION}: {shown(uri)} is this instance")
            return
        cluster = self.runtime.registry.by_uri(uri) or Cluster(uri, origin="explicit")
        self.preflight([Candidate(cluster)])

    def preflight(self, candidates):
        if self.phase != SUBMITTING:
            return
        metrics = self.runtime.policy_metrics(self.target.policy)
        Preflight(self, candidates, metrics, self.choose).start()

    def choose(self, candidates):
        """Order the candidates (policy), record the choice, and try them."""
        if self.phase != SUBMITTING:
            return
        policy = self.target.policy
        request = fits = None
        if "estimate" in self.runtime.policy_metrics(policy):
            request = self.request_for_estimate()
            fits = estimate_candidates(request, candidates)
        try:
            if policy is not None and policy not in self.runtime.policies:
                raise PolicyError(f"policy '{policy}' is no longer configured")
            if policy is None:
                order = list(candidates)
            else:
                order = apply_policy(
                    self.runtime.policies[policy],
                    policy,
                    self.target.policy_arg,
                    JobView(self.id, self.userid, self.jobspec),
                    candidates,
                )
        except PolicyError as exc:
            self.record_choice(policy, candidates, [])
            self.fail(str(exc))
            return
        usable = [c for c in order if c.usable]
        self.record_choice(policy, candidates, usable)
        if not usable:
            self.fail(no_target_message(candidates, order))
            return
        if fits is not None:
            reserve_choice(request, usable[0], fits)
        if usable[0].local:
            self.stay_local()
            return
        usable = [c for c in usable if not c.local]
        self.candidate = usable[0]
        if self.accepted and not self.bypass_set:
            self.set_bypass()  # held off while it might have stayed here
        self.untried = usable
        self.failures = []
        self.try_next()

    def record_choice(self, policy, candidates, order):
        """Provenance: every candidate with its verdict or metric, and the
        order in which they will be tried (the first is the choice)."""
        context = {
            "candidates": [c.record() for c in candidates],
            "order": [c.name for c in order],
            "choice": order[0].name if order else None,
        }
        if policy is not None:
            context["policy"] = policy + (
                f":{self.target.policy_arg}" if self.target.policy_arg else ""
            )
        self.runtime.jobtap.post_event(self.id, "delegate-choice", context)

    # -- submitting remotely -----------------------------------------------

    def try_next(self):
        candidate = self.untried.pop(0)
        self.candidate = candidate
        self.uri = candidate.uri
        self.remote = candidate.remote
        self.outcome = RemoteOutcome()
        self.stop_collecting()  # of a remote job before, if any
        self.remote_R = None
        # Deadline: submit-timeout from the first send to this candidate
        # (a target still starting is sent to again until then).
        self.submit_deadline = time.monotonic() + self.runtime.submit_timeout
        self.send_submit()

    def send_submit(self):
        if self.remote.lost:
            self.failover(f"cannot connect to {self.uri}: {self.remote.lost}")
            return
        self.submission = Submission(self, self.remote, self.uri)
        self.submission.send()

    def on_submit_timeout(self, submission):
        """No answer in time.  The target may yet create the job: trying
        another target could run it twice, so the job fails here, and a job
        created late is canceled (Submission.on_answer)."""
        if submission is not self.submission or self.phase != SUBMITTING:
            return
        if submission.outgoing.withdraw():
            # Still queued behind requests the target has not read: nothing
            # was sent, so another target may take the job.
            self.failover(
                f"submit to {self.uri} failed: the target read no request"
                f" within {self.runtime.submit_timeout:g}s"
            )
            return
        self.fail(
            f"submit to {self.uri} failed: no answer within"
            f" {self.runtime.submit_timeout:g}s (not tried elsewhere: the target may"
            " still create the job, which would then be canceled)"
        )

    def on_submit_error(self, submission, exc, sent=True):
        if submission is not self.submission:
            return
        if self.phase == ENDED and sent and exc.errno in CONNECTION_ERRORS:
            # Ended meanwhile (canceled): whatever the submit made must go.
            self.recover_submit(submission)
            return
        if self.phase != SUBMITTING:
            return
        if not sent:
            # Never sent (the connection broke first): try elsewhere.
            self.failover(f"submit to {self.uri} failed: {exc.strerror or exc}")
            return
        if exc.errno == errno.ENOSYS and time.monotonic() < self.submit_deadline:
            # The target is still starting (no job-ingest yet): try again.
            self.timers.start(
                "submit-retry", 1.0, guard(lambda: self.retry_submit(submission), self)
            )
            return
        if exc.errno in CONNECTION_ERRORS:
            # The request may have reached the target before the break:
            # look for the job there once it answers again.
            log(syslog.LOG_INFO, f"{self.name}: submit to {self.uri}: {exc.strerror or exc}")
            self.phase = RECOVERING
            self.recover_submit(submission)
            return
        self.failover(f"submit to {self.uri} failed: {exc.strerror or exc}")

    def recover_submit(self, submission):
        """Look on the target for what a submit cut off by a broken
        connection made; it was pending until submit-timeout after it was
        sent, at the most."""
        interrupted = {
            "uri": submission.uri,
            "label": self.candidate.label,
            "timestamp": submission.sent,
        }
        Recovery(
            self,
            interrupted,
            submission.sent + self.runtime.submit_timeout,
            known=self.known_remote.get(submission.uri, ()),
        ).start()

    def retry_submit(self, submission):
        if submission is self.submission and self.phase == SUBMITTING:
            self.send_submit()

    def failover(self, reason, started=None):
        """This candidate failed for sure (no remote job runs): note it in
        the eventlog and try the next candidate, or fail with every
        candidate's failure.  started: whether the remote job on this
        candidate had started (None: there was none)."""
        candidate = self.candidate
        self.failures.append((candidate, reason))
        if not self.untried:
            if len(self.failures) == 1:
                self.fail(reason)
            else:
                self.fail(
                    "all targets failed: "
                    + "; ".join(f"{c.describe()}: {r}" for c, r in self.failures)
                )
            return
        context = {"uri": candidate.uri, "reason": reason, "next": self.untried[0].name}
        if candidate.label:
            context["label"] = candidate.label
        if started is not None:
            context["started"] = started
        self.runtime.jobtap.post_event(self.id, "delegate-failover", context)
        log(syslog.LOG_INFO, f"{self.name}: {candidate.describe()}: {reason}; trying next")
        self.phase = SUBMITTING
        self.try_next()

    def on_submitted(self, submission, remote_id):
        """The target accepted the job as remote_id."""
        self.remote_id = JobID(remote_id)
        self.start_following()
        self.known_remote.setdefault(self.uri, set()).add(int(self.remote_id))
        context = {"jobid": int(self.remote_id), "uri": self.uri}
        if self.candidate.label:
            context["label"] = self.candidate.label
        self.runtime.jobtap.post_event(self.id, "delegated", context)
        log(
            syslog.LOG_INFO,
            f"{self.name}: delegated to {self.candidate.describe()} as {self.remote_id.f58}",
        )
        self.verified = self.remote
        self.follow(self.remote)

    def adopt(self, recovery, remote_id):
        """The job an interrupted submit made was found: follow it."""
        self.remote_id = JobID(remote_id)
        self.uri = recovery.uri
        self.start_following()
        self.known_remote.setdefault(self.uri, set()).add(int(self.remote_id))
        context = {"jobid": int(self.remote_id), "uri": self.uri, "recovered": True}
        if recovery.label:
            context["label"] = recovery.label
        self.runtime.jobtap.post_event(self.id, "delegated", context)
        log(
            syslog.LOG_INFO,
            f"{self.name}: found {self.remote_id.f58} on {self.uri}, made by a"
            " submit whose answer was lost; following it",
        )
        self.verified = recovery.remote
        self.follow(recovery.remote)

    def resume(self, delegation):
        """Follow again a remote job delegated before a reload/restart."""
        self.uri = delegation.get("uri")
        self.start_following()
        self.remote_id = JobID(delegation.get("jobid"))
        log(
            syslog.LOG_INFO,
            f"{self.name}: following {self.remote_id.f58} on {self.uri} again",
        )
        self.lost_reason = "the source reloaded"
        self.reconnecting.start()

    # -- following the remote job ------------------------------------------

    def start_following(self):
        """The remote job exists (on self.uri): follow it from now on.
        Contact lost is sought again every reconnect-interval; deadline:
        reconnect-timeout after contact was lost (the last event received,
        or the reload), counted afresh after each event."""
        self.phase = FOLLOWING
        if self.reconnecting is not None:
            self.reconnecting.stop()
        reconnecting = Retrying(
            self.runtime,
            self.uri,
            self.reattach,
            self.out_of_contact,
            wanted=lambda: self.phase == FOLLOWING and self.reconnecting is reconnecting,
            job=self,
        )
        self.reconnecting = reconnecting

    def follow(self, remote):
        if self.phase != FOLLOWING:
            return
        self.remote = remote
        if remote.lost:
            self.connection_lost(remote, remote.lost)
            return
        remote.listeners.add(self)
        if remote.journal is not None and remote.journal.follow(self, self.remote_id):
            return  # its events come through the target's journal (journal.py)
        # A target answers a watch at once with the eventlog so far.  One
        # that never does (a hung job-info, a request lost as the module
        # was reloaded) would leave the job pending for ever: give up on
        # that watch after submit-timeout and follow again, within
        # reconnect-timeout.
        watch = self.watch = EventlogWatch(
            remote,
            self.remote_id,
            self.on_remote_event,
            self.on_watch_end,
            job=self,
            answer_within=self.runtime.submit_timeout,
        )
        watch.start()
        if not watch.sent and not watch.over:
            log(
                syslog.LOG_DEBUG,
                f"{self.name}: watch queued: {remote.unanswered} bytes unanswered on {self.uri}",
            )

    def on_journal_event(self, remote_id, event, R=None):
        """An event of the remote job from its target's journal, as a
        watch would have brought it later; with alloc, its R (which then
        need not be asked for at the end)."""
        if self.phase != FOLLOWING or remote_id != self.remote_id:
            return
        if R is not None:
            self.remote_R = R
        self.on_remote_event(event)
        if self.phase != FOLLOWING and event.name == "clean":
            self.runtime.counts["ended-by-journal"] += 1

    def stop_following(self):
        self.timers.cancel("identity")
        if self.reconnecting is not None:
            self.reconnecting.stop()
        self.stop_watch()
        if self.remote is not None:
            self.remote.listeners.discard(self)

    def journal_ended(self, remote):
        """The journal that brought this job's events ended: watch its
        eventlog instead (a lost connection is seen to by connection_lost)."""
        if self.phase == FOLLOWING and self.remote is remote and not remote.lost:
            self.follow(remote)

    def stop_watch(self):
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.cancel()
        journal = self.remote.journal if self.remote is not None else None
        if journal is not None:
            journal.unfollow(self, self.remote_id)

    def connection_lost(self, remote, reason):
        """The remote job cannot be followed for now (target restarting,
        ssh dropped, its job-info gone...).  It may well live on: follow it
        again once its target answers, for up to reconnect-timeout."""
        if remote is not self.remote or self.phase != FOLLOWING:
            return
        self.timers.cancel("identity")
        self.stop_watch()
        self.stop_collecting()  # taken again once it is back
        remote.listeners.discard(self)
        self.lost_reason = reason
        if self.reconnecting.failed(reason):
            log(
                syslog.LOG_INFO,
                f"{self.name}: lost contact with {self.remote_id.f58} on {self.uri}"
                f" ({reason}); reconnecting",
            )

    def out_of_contact(self, reason):
        """No contact for reconnect-timeout (Retrying gave up)."""
        where = f"remote job {self.remote_id.f58} on {self.uri}"
        if self.reconnecting.connect_failed:
            self.fail(
                f"lost contact with {where} ({self.lost_reason}), and cannot reconnect: {reason}"
            )
        else:
            self.fail(
                f"lost contact with {where} for {self.runtime.reconnect_timeout:g}s: {reason}"
            )

    def reattach(self, remote):
        """Connected again (or after a reload): make sure remote_id is still
        this job's there, then watch it again."""
        if self.phase != FOLLOWING:
            return
        if remote is self.verified:
            self.watch_again(remote)
            return
        self.remote = remote
        remote.listeners.add(self)  # connection_lost() if it goes meanwhile
        self.timers.start(
            "identity",
            self.runtime.submit_timeout,
            guard(lambda: self.identity_unanswered(remote), self),
        )
        check = self.identity_check = object()
        check_identity(
            remote,
            self.remote_id,
            self.origin,
            lambda verdict, why: self.on_identity(remote, verdict, why, check),
            job=self,
        )

    def identity_unanswered(self, remote):
        if self.phase == FOLLOWING and self.remote is remote and self.verified is not remote:
            self.identity_check = None  # a late answer no longer counts
            self.connection_lost(
                remote, f"it did not answer within {self.runtime.submit_timeout:g}s"
            )

    def on_identity(self, remote, verdict, why, check):
        if (
            self.phase != FOLLOWING
            or self.remote is not remote
            or remote.lost
            or check is not self.identity_check
        ):
            return  # superseded, or connection_lost() takes it from here
        self.identity_check = None
        self.timers.cancel("identity")
        where = f"remote job {self.remote_id.f58} on {self.uri}"
        if verdict == "same":
            self.verified = remote
            self.watch_again(remote)
        elif verdict == "gone":
            self.fail(
                f"{where} no longer exists (purged, or the target was replaced"
                " or restarted without its state)",
                cancel_remote=False,
            )
        elif verdict == "other":
            self.fail(
                f"{where} is not this job's: the target is a different"
                f" instance now ({why}); the remote job this job ran as is"
                " lost, and the stranger is left alone",
                cancel_remote=False,
            )
        else:
            self.connection_lost(remote, why)

    def watch_again(self, remote):
        log(syslog.LOG_DEBUG, f"{self.name}: watching {self.remote_id.f58} on {self.uri} again")
        self.outcome = RemoteOutcome()  # the watch replays the whole eventlog
        self.follow(remote)  # in contact again at its first event

    def on_watch_end(self, error):
        """The watch ended: at the end of the eventlog (error None), or with
        an error."""
        if self.phase != FOLLOWING:
            log(syslog.LOG_DEBUG, f"{self.name}: end of a watch given up on, ignored")
            return
        self.watch = None
        if error is None:
            self.reconnecting.contact()
            self.conclude()
        elif error.errno == errno.ENOENT:
            self.fail(
                f"remote job {self.remote_id.f58} no longer exists on"
                f" {self.uri} (purged, or the instance restarted without"
                " its state)"
            )
        elif error.errno == errno.EPERM:
            self.fail(
                f"cannot follow remote job {self.remote_id.f58} on"
                f" {self.uri}: {error.strerror or error}"
            )
        else:
            # Anything else is the target going away or coming back (a
            # target shutting down answers ENOSYS before its connection
            # closes), or its job-info not answering: follow again once it
            # answers.
            self.connection_lost(self.remote, error.strerror or str(error))

    def on_remote_event(self, event):
        if self.phase != FOLLOWING:
            log(syslog.LOG_DEBUG, f"{self.name}: answer to a watch given up on, ignored")
            return
        self.reconnecting.contact()
        self.outcome.update(event.name, event.context)
        if self.moving is not None:
            self.moving.on_remote_event(event)
        if self.requeue() and not self.outcome.allocated:
            # The target cannot allocate: the remote job will never start,
            # so another target may take the job at once.
            self.stop_following()
            self.phase = SUBMITTING
            self.failover(
                describe_remote_exception(self.remote_id.f58, self.uri, self.outcome.exception),
                started=False,
            )
        elif self.outcome.ended:
            self.conclude()
        elif (
            event.name == "finish"
            and self.outcome.exception is None
            and self.collecting is None
            and self.stored is None
            and self.storing is None
        ):
            self.collect()  # its output is complete: take it while the target cleans up

    def requeue(self):
        """Whether the remote job's end calls for running the job elsewhere:
        its allocation failed (an alloc exception: the target could not
        allocate it, or lost what it had allocated), another candidate is
        left, and, if it had been allocated (it may have started), the job
        did not opt out with -S delegate-requeue=false.  As Slurm requeues
        a job on node failure; other exceptions (a cancel, a timeout, the
        job's own failure) end the job."""
        exception = self.outcome.exception
        if exception is None or exception.get("type") != "alloc" or not self.untried:
            return False
        return not self.outcome.allocated or requeue_allowed(self.jobspec)

    def conclude(self):
        """The remote job has ended: end the local one the same way."""
        if self.phase != FOLLOWING:
            return
        self.stop_following()
        exception = self.outcome.exception
        if is_move_cancel(exception):
            # Canceled by this plugin to move it (move.py): not its end.
            moving, self.moving = self.moving, None
            finish_move(self, moving)
        elif self.requeue():
            # It may have run, and has ended there: only now may it run
            # elsewhere.
            self.phase = SUBMITTING
            self.failover(
                describe_remote_exception(self.remote_id.f58, self.uri, exception),
                started=self.outcome.started,
            )
        elif exception is not None:
            note = describe_remote_exception(self.remote_id.f58, self.uri, exception)
            if (
                exception.get("type") == "alloc"
                and self.outcome.allocated
                and self.untried
                and not requeue_allowed(self.jobspec)
            ):
                note += "; not requeued: the job opted out (delegate-requeue=false)"
            self.fail(note)
        elif self.outcome.wait_status is None:
            self.fail(
                f"remote job {self.remote_id.f58} on {self.uri} ended" " without an exit status"
            )
        else:
            self.release(self.outcome.wait_status)

    def release(self, wait_status):
        """Let the local job finish with wait_status, using no resources
        (alloc-bypass, exec test mode).

        First what it takes from its remote job (output.Collect): the
        output, to be the local job's own (what 'flux job attach' shows),
        and R, for the local R to name the remote nodes (what 'flux jobs'
        shows).  The job is still pending meanwhile: a restart or reload
        follows the remote job again and comes back here.

        R goes to the KVS first, so that the alloc event can follow the
        job's arrival in SCHED at once.  With a KVS commit in between (as
        alloc-bypass.so does it), a plugin reload in that moment would
        leave the job in SCHED for ever, its alloc event never posted.
        """
        self.phase = RELEASING
        self.wait_status = wait_status
        if self.stored is not None:
            self.once_accepted(self.release_now)  # taken at its finish
        elif self.collecting is None and self.storing is None:
            self.collect()
        # else: being taken or written: on_R_committed() releases it

    def collect(self):
        """Take R and the output from the remote job (output.Collect) and
        store them with the job.  Started at the remote finish, while the
        target cleans up, so that the release can follow the remote clean
        at once; or at the end (release()), if that is when it comes."""
        token = object()
        self.collecting = Collect(
            self,
            self.remote,
            self.remote_id,
            self.runtime.output_limit,
            lambda R, output: self.on_collected(token, R, output),
            known_R=self.remote_R,
        )
        self.collecting.token = token
        self.collecting.start()

    def stop_collecting(self):
        """What was taken from a remote job no longer counts (it failed, or
        its connection broke: taken again after the reconnect)."""
        collecting, self.collecting = self.collecting, None
        if collecting is not None:
            collecting.cancel()
        self.storing = self.stored = None

    def on_collected(self, token, R, output):
        """R, the output and an exec eventlog go to the job's KVS directory
        in one commit, while the job is still pending, where job-exec would
        have left them (guest.*): the job's own from then on, read from
        there by 'flux job attach' once it has ended (localrun.py)."""
        if self.collecting is None or self.collecting.token is not token:
            return  # no longer wanted
        self.collecting = None
        if self.phase not in (FOLLOWING, RELEASING):
            return  # ended meanwhile
        self.R = R if R is not None else local_R(self.runtime.hostname)
        self.R_given = False
        txn = flux.kvs.KVSTxn(self.runtime.handle, JobID(self.id).kvs)
        txn.put("R", self.R)
        if output is not None:
            txn.put("guest.output", output, raw=True)
        if self.outcome.wait_status is not None:
            txn.put("guest.exec.eventlog", exec_eventlog(self.outcome.wait_status), raw=True)
        self.storing = token
        then(txn.commit_async(), lambda f: self.on_R_committed(f, token), job=self)

    def on_R_committed(self, future, token):
        """Stored: released now if the remote job's end is known (clean),
        else when it is (release())."""
        future.get()
        if self.storing is not token:
            return  # taken again since (stop_collecting)
        self.storing = None
        self.stored = token
        if self.phase == RELEASING:
            self.once_accepted(self.release_now)

    def release_now(self):
        """Order matters: the state (released, its LocalRun) is set first,
        because removing the dependency runs the next state callbacks
        (job.state.sched and job.state.run, below) before it returns, as a
        rule."""
        if self.phase != RELEASING or self.released:
            return  # ended meanwhile, or released already
        self.released = True
        self.runtime.jobtap.jobspec_update(self.id, release_updates(self.wait_status))
        if not self.bypass_set:
            self.set_bypass()
        self.run = LocalRun(self, self.wait_status)
        self.runtime.jobtap.dependency_remove(self.id, DEPENDENCY)
        # Its events handled (SCHED, alloc, RUN) unless this was called from
        # inside one of its callbacks: then on_sched's timer goes on.
        self.run.finish_when_ready()

    def set_bypass(self):
        """alloc-bypass: the job is never allocated from the scheduler here.
        Set at DEPEND, before its R is written (at the remote finish): a
        restart reads R back, and R of a job without the flag would count
        as allocated here."""
        self.bypass_set = True
        self.runtime.jobtap.set_flag(self.id, "alloc-bypass")

    # -- jobtap callbacks for this job -------------------------------------

    def on_depend(self, args):
        if not self.bypass_set and not self.may_stay and not self.stayed:
            self.set_bypass()
        self.accepted = True
        actions, self.when_accepted = self.when_accepted, []
        for action in actions:
            action()
        self.check_ready()

    def on_dependency_removed(self, args):
        self.check_ready()

    def on_sched(self, args):
        """The released job reaches SCHED: give it R (alloc-bypass) and
        post its alloc, handled right after this callback, once the
        job-manager has taken R.  Its run goes on (localrun.LocalRun) once
        the job's events are handled: when dependency_remove() returns
        (release_now), else on the next pass of the reactor."""
        if self.phase != RELEASING or self.R_given or self.run is None:
            return None
        self.R_given = True
        self.run.allocate()
        self.timers.start("run", 0.0, guard(self.run.finish_when_ready, self))
        if args.get("R") is not None:
            return None  # the job-manager has it (read back at a restart)
        return {"R": self.R if self.R is not None else local_R(self.runtime.hostname)}

    def on_run(self, args):
        """The released job runs: hold job-exec's start request."""
        if self.phase == RELEASING and self.run is not None:
            self.run.hold()

    def resume_release(self, scheduled):
        """A plugin loaded again after the released job's dependency was
        removed but before its alloc (resume_released): a job in SCHED is
        allocated and run on the next pass of the reactor (not inside
        job.create, where its end would come before other plugins saw it
        begin); one a priority plugin still holds gets its R, read back
        from its KVS directory, once it reaches SCHED (on_sched)."""
        self.released = True
        self.bypass_set = True
        self.run = LocalRun(self, self.wait_status)
        if scheduled:
            self.R_given = True
            self.timers.start("run", 0.0, guard(self.allocate_resumed, self))
        else:
            self.look_up_own("R", self.on_stored_R)

    def allocate_resumed(self):
        if self.phase == RELEASING:
            self.run.allocate()  # outside callbacks: handled before it returns
            self.run.finish_when_ready()

    def on_stored_R(self, R):
        if not self.R_given:
            self.R = json.loads(ffi.string(R).decode())

    def resume_run(self):
        """A plugin loaded again while the released job's run was held
        (resume_released): its eventlog says what is left to do."""
        self.run = LocalRun(self, self.wait_status)
        self.run.resuming = []
        future = self.runtime.handle.rpc(
            "job-manager.getattr", {"id": self.id, "attrs": ["eventlog"]}
        )
        then(future, self.on_run_eventlog, job=self)

    def on_run_eventlog(self, future):
        self.run.resume(future.get()["eventlog"], running=self.phase == RELEASING)

    def on_prolog(self, args):
        """job.event.prolog-start / prolog-finish: a prolog of the site's
        holds the released job's run until it finishes (LocalRun)."""
        entry = args.get("entry") or {}
        if self.run is not None:
            self.run.on_prolog(
                entry.get("name"),
                (entry.get("context") or {}).get("description"),
                entry.get("timestamp", 0.0),
            )

    def on_cleanup(self, args):
        """The local job ends.  If that is not our doing, the remote job
        (or the submit in flight) is canceled: nothing runs on its own."""
        if self.phase in (RELEASING, ENDED):
            self.phase = ENDED
            if self.run is not None:
                self.run.job_ended()
            self.stop_collecting()
            return
        reason = local_end_reason(args, self.name)
        previous, self.phase = self.phase, ENDED
        self.canceled_reason = reason
        self.stop_collecting()
        if previous == FOLLOWING:
            self.stop_following()
            self.cancel_remote(reason)

    def on_inactive(self, args):
        self.stop_following()
        self.timers.cancel()
        self.runtime.jobs.pop(self.id, None)
        self.runtime.admission.leave(self)

    def on_urgency(self, args):
        """A held job (urgency 0) is not delegated until it is released."""
        self.urgency = args.get("urgency", self.urgency)
        if self.urgency != 0:
            self.check_ready()

    def cancel_remote(self, reason):
        """Cancel the remote job: now, or, if the connection is down, as soon
        as it is back.  It must not run on alone."""
        RemoteCancel(self, reason).start()
