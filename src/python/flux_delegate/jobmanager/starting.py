"""Starting: the remote job is allocated, and the local job runs from now on.

While its remote job is pending, the local job is pending (DEPEND, its
dependency "delegated").  In Flux a job runs (state R in 'flux jobs',
its runtime counting) from its alloc event: so as its remote job's alloc
is seen, the local job is released and runs too, as it would at the end
otherwise (localrun.LocalRun): no resources, processes or job-exec here
(alloc-bypass); its R names the remote nodes; our prolog holds job-exec's
start request; start and finish, with the remote wait status, are posted
as the remote job ends (Releasing).  'flux jobs -a' then gives about the
remote run's start and end times.

In order, each step the one a restart can take up from:
  1. R (named after the remote job's, output.RemoteR) goes to the KVS,
     where a restart reads it back;
  2. the jobspec update that marks the job released while its remote job
     runs (jobspec.running_updates), with its annotation: in RUN a job
     takes no jobspec update, and a restart forgets annotations;
  3. the dependency is removed: job.state.sched gives R and posts alloc,
     job.state.run holds the run with our prolog (Releasing.on_sched,
     on_run), within the call, as a rule.

A job in RUN cannot be pending again.  What later happens to its remote
job happens to it running: an exception fails it; an allocation lost
after the start (requeue) sends it to the next candidate, the local job
still running (what 'flux jobs' shows, its annotation and nodes, still
names the first until the end); 'flux cancel' cancels the remote job;
a reload or restart follows the remote job again (resuming.py).  A
remote job that ends before all this is done ends the job as before
(Releasing).  With the plugin option mirror-run=false the local job stays
pending until the remote job has ended.
"""

import flux.kvs
from flux.job import JobID

from ..jobspec import local_R, running_updates
from ..names import DEPENDENCY
from .following import nodelist_of
from .liveoutput import LiveOutput
from .localrun import LocalRun
from .output import RemoteR
from .phases import ENDED, FOLLOWING, Phase
from .reactor import then


class Starting(Phase):
    """The local start of one job, at its remote job's (job.py holds its
    state)."""

    __slots__ = ()

    def wanted(self):
        """Whether the local job should start now: its remote job is
        allocated, has not ended, and is not being moved (move.py: a move
        that comes too late ends in a requeue, Releasing)."""
        job = self.job
        outcome = job.outcome
        return (
            job.runtime.mirror_run
            and job.phase == FOLLOWING
            and job.accepted
            and job.run is None
            and job.start_token is None
            and job.moving is None
            and outcome.allocated
            and outcome.exception is None
            and not outcome.ended
        )

    def start(self):
        """After each remote event (Following): start if wanted().  Returns
        whether it did (then the state callbacks carry the annotation)."""
        if not self.wanted():
            return False
        job = self.job
        token = job.start_token = object()
        RemoteR(
            job, job.remote, job.remote_id, lambda R: self.on_R(token, R), known=job.remote_R
        ).start()
        return True

    def on_R(self, token, R):
        """Step 1: R to the KVS."""
        job = self.job
        if job.start_token is not token or job.phase != FOLLOWING or job.run is not None:
            job.start_token = None if job.start_token is token else job.start_token
            return
        job.R = R if R is not None else local_R(job.runtime.hostname)
        if job.annotation is not None:
            job.annotation = dict(job.annotation, **nodelist_of(R))
        job.R_given = False
        txn = flux.kvs.KVSTxn(job.runtime.handle, JobID(job.id).kvs)
        txn.put("R", job.R)
        then(txn.commit_async(), lambda f: self.on_R_committed(f, token), job=job)

    def on_R_committed(self, future, token):
        """Steps 2 and 3.  The state (its LocalRun, released) is set before
        the calls, which run the job's next state callbacks."""
        future.get()
        job = self.job
        if job.start_token is not token:
            return
        job.start_token = None
        if job.phase != FOLLOWING or job.run is not None:
            return  # ended meanwhile, or its end releases it (Releasing)
        job.released = True
        job.runs_with_remote = True
        job.run = LocalRun(job, None)  # its wait status comes at the end
        job.runtime.counts["started-with-remote"] += 1
        job.runtime.jobtap.jobspec_update(job.id, running_updates(job.annotation))
        if not job.bypass_set:
            job.releasing.set_bypass()
        job.runtime.jobtap.dependency_remove(job.id, DEPENDENCY)
        self.begin_live_output()

    def begin_live_output(self, resumed=False):
        """Its output copied as it comes, for 'flux job attach' to stream
        (liveoutput.py); not with live-output=false.  After a reload or
        restart, too (resuming.py)."""
        job = self.job
        taken = job.collecting is not None or job.storing is not None or job.stored is not None
        if taken:
            return  # ended before it started here: its output is taken already
        wanted = job.runtime.live_output and job.runtime.output_limit > 0
        if wanted and job.live is None and job.phase != ENDED:
            job.live = LiveOutput(job)
            post_start = job.run.post_start if not job.run.started else None
            if resumed:
                job.live.resume(post_start)
            else:
                job.live.begin(post_start)
