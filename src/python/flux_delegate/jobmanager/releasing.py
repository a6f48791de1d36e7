"""Releasing: the remote job ended; the local job ends the same way.

A remote job that ended with an exit status gives the local job what it
left (output.Collect): its output and R, written to the local job's KVS
directory as the local job's own (guest.output, with an exec eventlog)
while the local job is still pending.  Then the local job is released and
run through to its end by the plugin's own events, without resources,
processes or job-exec (alloc-bypass, localrun.LocalRun): its R names the
remote nodes and its finish carries the remote wait status, so 'flux job
attach' shows the remote output and 'flux job status' gives its exit code.
A remote exception fails the local job (DelegationFailure); an allocation
failure may instead send it on (Failover); the cancel of a move submits it
elsewhere (move.finish_move).
"""

import flux.kvs
from flux.job import JobID

from ..eventlog import describe_remote_exception
from ..jobspec import local_R, release_updates
from ..names import DEPENDENCY
from .localrun import LocalRun, exec_eventlog
from .move import finish_move, is_move_cancel
from .following import nodelist_of
from .output import Collect
from .phases import ENDED, FOLLOWING, RELEASING, SUBMITTING, Phase
from .reactor import guard, then


class Releasing(Phase):
    """The releasing phase of one job (job.py holds its state)."""

    __slots__ = ()

    def conclude(self):
        """The remote job has ended: end the local one the same way."""
        job = self.job
        if job.phase != FOLLOWING:
            return
        job.following.stop()
        exception = job.outcome.exception
        if is_move_cancel(exception):
            # Canceled by this plugin to move it (move.py): not its end.
            moving, job.moving = job.moving, None
            finish_move(job, moving)
        elif job.failover.requeue_wanted():
            # It may have run, and has ended there: only now may it run
            # elsewhere.
            job.phase = SUBMITTING
            job.failover.next(
                describe_remote_exception(job.remote_id.f58, job.uri, exception),
                started=job.outcome.started,
            )
        elif exception is not None:
            note = describe_remote_exception(job.remote_id.f58, job.uri, exception)
            if job.failover.opted_out():
                note += "; not requeued: the job opted out (delegate-requeue=false)"
            job.fail(note)
        elif job.outcome.wait_status is None:
            job.fail(f"remote job {job.remote_id.f58} on {job.uri} ended without an exit status")
        else:
            self.release(job.outcome.wait_status)

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
        job = self.job
        job.phase = RELEASING
        job.wait_status = wait_status
        if job.annotation is not None:
            job.annotation = dict(job.annotation, state="ended")  # shown at SCHED
        if job.live is not None and job.live.taking:
            job.live.end(wait_status, self.on_live_ended)  # copied as it came
        elif job.stored is not None:
            job.once_accepted(self.release_now)  # taken at its finish
        elif job.collecting is None and job.storing is None:
            self.collect()
        # else: being taken or written: on_R_committed() releases it

    def on_live_ended(self, moved):
        """Its output all copied as it came, and moved into its KVS
        directory: it ends; or there was no live output after all (its
        namespace could not be written): its output is taken now."""
        job = self.job
        if job.phase != RELEASING:
            return
        if moved:
            job.run.end_with(job.wait_status)
        elif job.collecting is None and job.storing is None:
            self.collect()

    def collect(self):
        """Take R and the output from the remote job (output.Collect) and
        store them with the job.  Started at the remote finish, while the
        target cleans up, so that the release can follow the remote clean
        at once; or at the end (release()), if that is when it comes."""
        job = self.job
        token = object()
        job.collecting = Collect(
            job,
            job.remote,
            job.remote_id,
            job.runtime.output_limit,
            lambda R, output: self.on_collected(token, R, output),
            known_R=job.remote_R,
        )
        job.collecting.token = token
        job.collecting.start()

    def stop_collecting(self):
        """What was taken from a remote job no longer counts (it failed, or
        its connection broke: taken again after the reconnect)."""
        job = self.job
        collecting, job.collecting = job.collecting, None
        if collecting is not None:
            collecting.cancel()
        job.storing = job.stored = None

    def on_collected(self, token, R, output):
        """R, the output and an exec eventlog go to the job's KVS directory
        in one commit, while the job is still pending, where job-exec would
        have left them (guest.*): the job's own from then on, read from
        there by 'flux job attach' once it has ended (localrun.py)."""
        job = self.job
        if job.collecting is None or job.collecting.token is not token:
            return  # no longer wanted
        job.collecting = None
        if job.phase not in (FOLLOWING, RELEASING):
            return  # ended meanwhile
        txn = flux.kvs.KVSTxn(job.runtime.handle, JobID(job.id).kvs)
        if job.run is not None and output is not None:
            # Running here (starting.py): its guest key may still link a
            # guest namespace made for live output (liveoutput.py), now
            # given up or gone; the output goes in a directory of its own.
            txn.unlink("guest")
        if job.run is None:  # not running here yet (starting.py): R too
            job.R = R if R is not None else local_R(job.runtime.hostname)
            if job.annotation is not None and "nodelist" not in job.annotation:
                job.annotation = dict(job.annotation, **nodelist_of(R))  # shown at SCHED
            job.R_given = False
            txn.put("R", job.R)
        if output is not None:
            txn.put("guest.output", output, raw=True)
        if job.outcome.wait_status is not None:
            txn.put("guest.exec.eventlog", exec_eventlog(job.outcome.wait_status), raw=True)
        job.storing = token
        then(txn.commit_async(), lambda f: self.on_R_committed(f, token), job=job)

    def on_R_committed(self, future, token):
        """Stored: released now if the remote job's end is known (clean),
        else when it is (release())."""
        future.get()
        job = self.job
        if job.storing is not token:
            return  # taken again since (stop_collecting)
        job.storing = None
        job.stored = token
        if job.phase == RELEASING:
            job.once_accepted(self.release_now)

    def release_now(self):
        """Order matters: the state (released, its LocalRun) is set first,
        because removing the dependency runs the next state callbacks
        (job.state.sched and job.state.run, below) before it returns, as a
        rule."""
        job = self.job
        if job.phase != RELEASING:
            return  # ended meanwhile
        if job.runs_with_remote:
            job.run.end_with(job.wait_status)  # running since the remote alloc
            return
        if job.released:
            return  # released already
        job.released = True
        job.runtime.jobtap.jobspec_update(job.id, release_updates(job.wait_status))
        if not job.bypass_set:
            self.set_bypass()
        job.run = LocalRun(job, job.wait_status)
        job.runtime.jobtap.dependency_remove(job.id, DEPENDENCY)
        # Its events handled (SCHED, alloc, RUN) unless this was called from
        # inside one of its callbacks: then on_sched's timer goes on.
        job.run.finish_when_ready()

    def set_bypass(self):
        """alloc-bypass: the job is never allocated from the scheduler here.
        Set at DEPEND, before its R is written (at the remote finish): a
        restart reads R back, and R of a job without the flag would count
        as allocated here."""
        job = self.job
        job.bypass_set = True
        job.runtime.jobtap.set_flag(job.id, "alloc-bypass")

    def on_sched(self, args):
        """The released job reaches SCHED: give it R (alloc-bypass) and
        post its alloc, handled right after this callback, once the
        job-manager has taken R.  Its run goes on (localrun.LocalRun) once
        the job's events are handled: when dependency_remove() returns
        (release_now), else on the next pass of the reactor."""
        job = self.job
        if job.phase == ENDED or job.R_given or job.run is None:
            return None
        job.R_given = True
        job.run.allocate()
        job.timers.start("run", 0.0, guard(job.run.go_on, job))
        if args.get("R") is not None:
            return job.showing.answer()  # the job-manager has R (read back at a restart)
        return job.showing.answer({"R": job.R if job.R is not None else local_R(job.runtime.hostname)})

    def on_run(self, args):
        """The released job runs: hold job-exec's start request."""
        job = self.job
        if job.phase != ENDED and job.run is not None:
            job.run.hold()
            return job.showing.answer()
        return None

    def on_prolog(self, args):
        """job.event.prolog-start / prolog-finish: a prolog of the site's
        holds the released job's run until it finishes (LocalRun)."""
        entry = args.get("entry") or {}
        if self.job.run is not None:
            self.job.run.on_prolog(
                entry.get("name"),
                (entry.get("context") or {}).get("description"),
                entry.get("timestamp", 0.0),
            )
