"""Waiting: a job held with the "delegated" dependency until it may go on.

A job whose only dependency is this one goes on from job.new
(early-handoff); the others wait for DEPEND, where their eventlog, read
from the job-manager, says what comes next: other dependencies to wait
for, a remote job to follow again (Resuming), a lost submit to look
for (Recovery), or a target to choose (Choosing.start).
"""

import functools
import os

import flux.constants
import flux.kvs
from flux.core.inner import ffi, lib
from flux.future import Future
from flux.job import JobID

from ..eventlog import (
    delegations,
    find_delegation,
    interrupted_submit,
    outstanding_dependencies,
)
from ..jobspec import delegation_is_only_dependency
from ..names import DEPENDENCY
from .phases import RECOVERING, WAITING, Phase
from .reactor import then
from .recovery import Recovery


class Waiting(Phase):
    """The waiting phase of one job (job.py holds its state)."""

    __slots__ = ()

    def on_new(self, args):
        """job.new: the job is accepted.  At submit, one whose only
        dependency is this one (none other in its jobspec, where flux's
        dependency schemes come from) goes on now (early-handoff): nothing
        can have been delegated before, and its eventlog, being committed,
        has nothing to say yet.  The rest wait for DEPEND (check_ready)."""
        job = self.job
        if (
            args.get("state") != flux.constants.FLUX_JOB_STATE_NEW
            or not job.runtime.early_handoff
            or job.phase != WAITING
            or job.urgency == 0
            or job.doomed is not None
            or not delegation_is_only_dependency(job.jobspec)
        ):
            return
        job.fresh = True
        if job.runtime.admission.admit(job):
            job.runtime.counts["early"] += 1
            job.choosing.start()
        # else its turn comes in a burst (Admission): check_ready()

    def check_ready(self):
        """Read the job's eventlog from the job-manager (asynchronously):
        delegate when "delegated" is the only dependency left, or re-follow
        the remote job if this job was delegated before (plugin reload,
        instance restart)."""
        job = self.job
        if job.phase != WAITING:
            return
        if job.urgency == 0 and job.doomed is None:
            return  # held: on_urgency checks again when released
        if job.checking:
            job.recheck = True
            return
        if not job.runtime.admission.admit(job):
            return  # its turn comes (Admission)
        if job.fresh:
            job.runtime.counts["early-queued"] += 1
            job.choosing.start()
            return
        job.checking = True
        future = job.runtime.handle.rpc(
            "job-manager.getattr", {"id": job.id, "attrs": ["eventlog"]}
        )
        then(future, self.on_eventlog, job=job)

    def on_eventlog(self, future):
        job = self.job
        job.checking = False
        eventlog = future.get()["eventlog"]
        if job.phase != WAITING:
            return
        previous = find_delegation(eventlog)
        interrupted = interrupted_submit(eventlog) if previous is None else None
        if previous is not None:
            # Delegated before (plugin reload, restart): follow it, even if
            # its target would not parse any more (registry changed).
            job.resuming.follow_again(previous)
        elif interrupted is not None:
            # A submit was sent and its answer lost (restart, reload): the
            # target may have the job.  Look before submitting again.  The
            # submission may have sent again for up to submit-timeout (a
            # target still starting), each send pending up to submit-timeout.
            job.phase = RECOVERING
            for uri, jobid in delegations(eventlog):
                job.known_remote.setdefault(uri, set()).add(jobid)
            Recovery(
                job,
                interrupted,
                interrupted["timestamp"] + 2 * job.runtime.submit_timeout,
                known=job.known_remote.get(interrupted["uri"], ()),
            ).start()
        elif job.doomed is not None:
            job.fail(job.doomed)
        elif not (outstanding_dependencies(eventlog) - {DEPENDENCY}):
            job.runtime.counts["at-depend"] += 1
            job.choosing.start()
        else:
            job.runtime.admission.leave(job)  # waits for its other dependencies
            if job.recheck:
                job.recheck = False
                self.check_ready()


def look_up_own(job, key, callback):
    """Read key of the job's KVS directory (the job-manager's own lookup:
    job-info would first check that the asker owns the job, one more hop
    for nothing here); callback(value) with it (a cffi char *, valid during
    the call)."""
    future = Future(
        flux.kvs.RAW.flux_kvs_lookup(job.runtime.handle, ffi.NULL, 0, f"{JobID(job.id).kvs}.{key}")
    )

    @functools.wraps(callback)  # named after it in a handler error
    def looked_up(future):
        value = ffi.new("char *[1]")
        if lib.flux_kvs_lookup_get(future.pimpl.handle, value) < 0:
            raise OSError(ffi.errno, f"cannot read the job's {key}: {os.strerror(ffi.errno)}")
        callback(value[0])

    then(future, looked_up, job=job)
