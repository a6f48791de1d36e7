"""Submitting: the job sent to its chosen target, and the answer taken.

Submission is one submit and its answer, whenever it comes; Submitting
decides what each answer means for the job: the remote job exists (then
Following), the target is still starting (sent again), the request may have
arrived before a broken connection (Recovery), or the candidate failed for
sure (Failover: the next one).
"""

import errno
import json
import syslog
import time

import flux
import flux.job
from flux.job import JobID

from ..eventlog import RemoteOutcome
from .connections import CONNECTION_ERRORS, HelperAnswer, submit_on_own_connection
from .phases import ENDED, RECOVERING, SUBMITTING, Phase
from .reactor import Timer, answered, guard, log
from .recovery import Recovery
from .outgoing import answer_of
from .remote import payload_size


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
            guard(lambda: self.job.submitting.on_submit_timeout(self), self.job, self.owner),
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
                    guard(self.job.submitting.on_submit_error, self.job, self.owner)(self, exc, sent)
                return
            job = self.job
            current = job.submission is self and job.phase == SUBMITTING
            if current and not self.owner.unloaded:
                guard(job.submitting.on_submitted, job, self.owner)(self, remote_id)
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


class Submitting(Phase):
    """The submitting phase of one job (job.py holds its state)."""

    __slots__ = ()

    def try_next(self):
        """Submit to the next candidate left (job.untried)."""
        job = self.job
        candidate = job.untried.pop(0)
        job.candidate = candidate
        job.uri = candidate.uri
        job.remote = candidate.remote
        job.outcome = RemoteOutcome()
        job.releasing.stop_collecting()  # of a remote job before, if any
        job.remote_R = None
        # Deadline: submit-timeout from the first send to this candidate
        # (a target still starting is sent to again until then).
        job.submit_deadline = time.monotonic() + job.runtime.submit_timeout
        self.send()

    def send(self):
        job = self.job
        if job.remote.lost:
            job.failover.next(f"cannot connect to {job.uri}: {job.remote.lost}")
            return
        job.submission = Submission(job, job.remote, job.uri)
        job.submission.send()

    def on_submit_timeout(self, submission):
        """No answer in time.  The target may yet create the job: trying
        another target could run it twice, so the job fails here, and a job
        created late is canceled (Submission.on_answer)."""
        job = self.job
        if submission is not job.submission or job.phase != SUBMITTING:
            return
        if submission.outgoing.withdraw():
            # Still queued behind requests the target has not read: nothing
            # was sent, so another target may take the job.
            job.failover.next(
                f"submit to {job.uri} failed: the target read no request"
                f" within {job.runtime.submit_timeout:g}s"
            )
            return
        # A helper thread still sending or waiting: its wait ends now (the
        # answer, an error then, goes to Submission.on_answer as any).
        give_up = getattr(submission.outgoing, "give_up", None)
        if give_up is not None:
            give_up()
        job.fail(
            f"submit to {job.uri} failed: no answer within"
            f" {job.runtime.submit_timeout:g}s (not tried elsewhere: the target may"
            " still create the job, which would then be canceled)"
        )

    def on_submit_error(self, submission, exc, sent=True):
        job = self.job
        if submission is not job.submission:
            return
        if job.phase == ENDED and sent and exc.errno in CONNECTION_ERRORS:
            # Ended meanwhile (canceled): whatever the submit made must go.
            self.recover(submission)
            return
        if job.phase != SUBMITTING:
            return
        if not sent:
            # Never sent (the connection broke first): try elsewhere.
            job.failover.next(f"submit to {job.uri} failed: {exc.strerror or exc}")
            return
        if exc.errno == errno.ENOSYS and time.monotonic() < job.submit_deadline:
            # The target is still starting (no job-ingest yet): try again.
            job.timers.start("submit-retry", 1.0, guard(lambda: self.retry(submission), job))
            return
        if exc.errno in CONNECTION_ERRORS:
            # The request may have reached the target before the break:
            # look for the job there once it answers again.
            log(syslog.LOG_INFO, f"{job.name}: submit to {job.uri}: {exc.strerror or exc}")
            job.phase = RECOVERING
            self.recover(submission)
            return
        job.failover.next(f"submit to {job.uri} failed: {exc.strerror or exc}")

    def recover(self, submission):
        """Look on the target for what a submit cut off by a broken
        connection made; it was pending until submit-timeout after it was
        sent, at the most."""
        job = self.job
        interrupted = {
            "uri": submission.uri,
            "label": job.candidate.label,
            "timestamp": submission.sent,
        }
        Recovery(
            job,
            interrupted,
            submission.sent + job.runtime.submit_timeout,
            known=job.known_remote.get(submission.uri, ()),
        ).start()

    def retry(self, submission):
        if submission is self.job.submission and self.job.phase == SUBMITTING:
            self.send()

    def on_submitted(self, submission, remote_id):
        """The target accepted the job as remote_id."""
        job = self.job
        self.delegated(remote_id, job.uri, job.candidate.label)
        log(
            syslog.LOG_INFO,
            f"{job.name}: delegated to {job.candidate.describe()} as {job.remote_id.f58}",
        )
        job.verified = job.remote
        job.following.follow(job.remote)

    def adopt(self, recovery, remote_id):
        """The job an interrupted submit made was found: follow it."""
        job = self.job
        self.delegated(remote_id, recovery.uri, recovery.label, recovered=True)
        log(
            syslog.LOG_INFO,
            f"{job.name}: found {job.remote_id.f58} on {job.uri}, made by a"
            " submit whose answer was lost; following it",
        )
        job.verified = recovery.remote
        job.following.follow(recovery.remote)

    def delegated(self, remote_id, uri, label, recovered=False):
        """remote_id on uri is the job's remote job: follow it from now on,
        and say so in the eventlog (the "delegated" event a reload finds)."""
        job = self.job
        job.remote_id = JobID(remote_id)
        job.uri = uri
        job.following.start()
        job.known_remote.setdefault(uri, set()).add(int(job.remote_id))
        context = {"jobid": int(job.remote_id), "uri": uri}
        if recovered:
            context["recovered"] = True
        if label:
            context["label"] = label
        job.runtime.jobtap.post_event(job.id, "delegated", context)
        job.showing.annotate(target=label or uri, uri=uri, jobid=job.remote_id.f58, state="pending")
