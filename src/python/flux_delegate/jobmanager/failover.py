"""Failover and requeue: a candidate that failed for sure gives way to the
next one.

Before a remote job exists (the target cannot be reached, refuses the
submit, read nothing in time) and after one ended without running (its
target could not allocate it), no remote job runs: the next candidate may
take the job at once (delegate-failover).  A remote job that lost its
allocation after it had started may have run in part: as Slurm requeues a
job on node failure, it runs again elsewhere unless it opted out with
-S delegate-requeue=false.
"""

import syslog

from ..jobspec import requeue_allowed
from .phases import SUBMITTING, Phase
from .reactor import log


class Failover(Phase):
    """Failover of one job (job.py holds its state)."""

    __slots__ = ()

    def next(self, reason, started=None):
        """This candidate failed for sure (no remote job runs): note it in
        the eventlog and try the next candidate, or fail with every
        candidate's failure.  started: whether the remote job on this
        candidate had started (None: there was none)."""
        job = self.job
        candidate = job.candidate
        job.failures.append((candidate, reason))
        if not job.untried:
            if len(job.failures) == 1:
                job.fail(reason)
            else:
                job.fail(
                    "all targets failed: "
                    + "; ".join(f"{c.describe()}: {r}" for c, r in job.failures)
                )
            return
        context = {"uri": candidate.uri, "reason": reason, "next": job.untried[0].name}
        if candidate.label:
            context["label"] = candidate.label
        if started is not None:
            context["started"] = started
        job.runtime.jobtap.post_event(job.id, "delegate-failover", context)
        log(syslog.LOG_INFO, f"{job.name}: {candidate.describe()}: {reason}; trying next")
        job.phase = SUBMITTING
        job.submitting.try_next()

    def requeue_wanted(self):
        """Whether the remote job's end calls for running the job elsewhere:
        its allocation failed (an alloc exception: the target could not
        allocate it, or lost what it had allocated), another candidate is
        left, and, if it had been allocated (it may have started), the job
        did not opt out with -S delegate-requeue=false.  Other exceptions
        (a cancel, a timeout, the job's own failure) end the job."""
        job = self.job
        exception = job.outcome.exception
        if exception is None or exception.get("type") != "alloc" or not job.untried:
            return False
        return not job.outcome.allocated or requeue_allowed(job.jobspec)

    def opted_out(self):
        """Whether requeue_wanted() said no only because the job opted out."""
        job = self.job
        exception = job.outcome.exception
        return (
            exception is not None
            and exception.get("type") == "alloc"
            and job.outcome.allocated
            and bool(job.untried)
            and not requeue_allowed(job.jobspec)
        )
