"""Resuming: a job taken up again after a plugin reload or an instance
restart, from what its eventlog says.

A job delegated before ("delegated" event) follows its remote job again
(follow_again: the remote id is checked to be its own first, Following).
A job this plugin released and had not run through yet (resume_released
in entry.py) is allocated and run again (release_again), or its run,
held by a site's prolog or by its remote job still running (starting.py),
taken up where it was (run_again); one released while its remote job ran
follows that job again, as a pending one does (Waiting.check_ready).  A submit
whose answer was lost is looked for on its target (recovery.py).
"""

import json
import syslog

from flux.core.inner import ffi
from flux.job import JobID

from .localrun import LocalRun
from .phases import ENDED, Phase
from .reactor import guard, log, then
from .waiting import look_up_own


class Resuming(Phase):
    """What a reload takes up again of one job (job.py holds its state)."""

    __slots__ = ()

    def follow_again(self, delegation):
        """Follow again a remote job delegated before a reload/restart
        (its "delegated" event)."""
        job = self.job
        job.uri = delegation.get("uri")
        job.following.start()
        job.remote_id = JobID(delegation.get("jobid"))
        log(syslog.LOG_INFO, f"{job.name}: following {job.remote_id.f58} on {job.uri} again")
        job.lost_reason = "the source reloaded"
        label = delegation.get("label")
        # A job running here shows its remote job running (starting.py)
        # until its eventlog, replayed, says otherwise.
        running = job.runs_with_remote and job.annotation is not None
        state = job.annotation.get("state", "running") if running else "pending"
        job.showing.annotate(target=label or job.uri, uri=job.uri, jobid=job.remote_id.f58, state=state)
        job.reconnecting.start()

    def release_again(self, scheduled):
        """A plugin loaded again after the released job's dependency was
        removed but before its alloc (resume_released): a job in SCHED is
        allocated and run on the next pass of the reactor (not inside
        job.create, where its end would come before other plugins saw it
        begin); one a priority plugin still holds gets its R, read back
        from its KVS directory, once it reaches SCHED (on_sched)."""
        job = self.job
        job.released = True
        job.bypass_set = True
        job.run = LocalRun(job, job.wait_status)
        if scheduled:
            job.R_given = True
            job.timers.start("run", 0.0, guard(self.allocate, job))
        else:
            look_up_own(job, "R", self.on_stored_R)

    def allocate(self):
        job = self.job
        if job.phase != ENDED:
            job.run.allocate()  # outside callbacks: handled before it returns
            job.run.finish_when_ready()

    def on_stored_R(self, R):
        if not self.job.R_given:
            self.job.R = json.loads(ffi.string(R).decode())

    def run_again(self):
        """A plugin loaded again while the released job's run was held
        (resume_released): its eventlog says what is left to do."""
        job = self.job
        job.run = LocalRun(job, job.wait_status)
        job.run.resuming = []
        future = job.runtime.handle.rpc(
            "job-manager.getattr", {"id": job.id, "attrs": ["eventlog"]}
        )
        then(future, self.on_run_eventlog, job=job)

    def on_run_eventlog(self, future):
        job = self.job
        job.run.resume(future.get()["eventlog"], running=job.phase != ENDED)
        if job.runs_with_remote and job.run.holding:
            job.starting.begin_live_output(resumed=True)  # its output copied again
