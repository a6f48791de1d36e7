"""Showing: what 'flux jobs' shows of a delegated job's remote job, the
annotation user.delegate {target, uri, jobid, state, nodelist} (job.py
holds it, job.annotation), kept current as the remote job moves.
"""

import errno
import syslog

from ..names import REMOTE_STATE_ATTRIBUTE
from .phases import ENDED, FOLLOWING, Phase
from .reactor import guard, log, then

#: How often, and how many times, job-list is asked after a restart until it
#: answers (republish).
REPUBLISH_INTERVAL = 0.5
REPUBLISH_TRIES = 120


class Showing(Phase):
    """The annotation of one job (job.py holds its state)."""

    __slots__ = ()

    def annotate(self, post=True, **changes):
        """Change what 'flux jobs' shows of its remote job: the annotation
        user.delegate {target, uri, jobid, state, nodelist}.  The
        job-manager takes a plugin's annotations only from the callback of
        a state change or of a jobspec update: while the job is pending
        here, an update of system.delegate-remote (the remote state) brings
        job.update, whose answer carries them (on_update).  Posted on the
        next pass of the reactor: never inside a callback for this job,
        where flux refuses it; not at all with annotate=false.  At DEPEND
        and at the release the state callbacks carry them (on_depend,
        Releasing.on_sched), whatever annotate says: they cost nothing;
        post=False leaves it to them (a job about to start, starting.py)."""
        job = self.job
        annotation = dict(job.annotation or {}, **changes)
        if annotation == job.annotation:
            return  # a watch replaying the eventlog: nothing new
        job.annotation = annotation
        if post and job.accepted and job.runtime.annotate and "annotate" not in job.timers:
            job.timers.start("annotate", 0.0, guard(self.post, job))

    def post(self):
        if self.job.phase == FOLLOWING:
            self.publish()

    def publish(self):
        """The update that brings job.update.  A job running here (released
        as its remote job started, starting.py) takes no jobspec update
        through flux_jobtap_jobspec_update, which guards the resources and
        command of a running job: for it the jobspec-update event itself is
        posted, of system.delegate-remote alone, which nothing else reads
        (job-list honours the event in any state).  A job released but not
        yet running gets its annotation from the state callbacks."""
        job = self.job
        update = {f"attributes.system.{REMOTE_STATE_ATTRIBUTE}": job.annotation["state"]}
        try:
            if not job.released:
                job.runtime.jobtap.jobspec_update(job.id, update)
            elif job.run is not None and job.run.holding:
                job.runtime.jobtap.post_event(job.id, "jobspec-update", update)
        except OSError as exc:  # e.g. ending meanwhile: only what it shows
            log(syslog.LOG_DEBUG, f"{job.name}: annotation not updated: {exc.strerror or exc}")

    def republish(self, tries=None):
        """After a restart, which forgets annotations: give job-list the one
        this job had (kept in its jobspec, starting.py).  Published from the
        job.create callback, before job-list listens, it would be lost:
        job-list.list-id answers once job-list knows the job, and the
        annotation is posted then, if job-list does not have it.  At a
        restart job-list is loaded after the job-manager: asked again every
        REPUBLISH_INTERVAL until it answers, for up to REPUBLISH_TRIES."""
        job = self.job
        tries = REPUBLISH_TRIES if tries is None else tries
        future = job.runtime.handle.rpc("job-list.list-id", {"id": job.id, "attrs": ["annotations"]})
        then(future, lambda f: self.on_listed(f, tries), job=job)

    def on_listed(self, future, tries):
        job = self.job
        try:
            listed = future.get()["job"]
        except OSError as exc:
            if exc.errno == errno.ENOSYS and tries > 1 and job.phase != ENDED:
                retry = guard(lambda: self.republish(tries - 1), job)
                job.timers.start("republish", REPUBLISH_INTERVAL, retry)
            return  # else no job-list here: nothing shows annotations
        except (KeyError, TypeError):
            return
        shown = (listed.get("annotations") or {}).get("user", {}).get("delegate")
        if job.annotation is not None and shown != job.annotation:
            self.publish()

    def answer(self, answer=None):
        """A callback's answer (answer: what else it says), with the
        annotation."""
        job = self.job
        if job.annotation is None:
            return answer
        return dict(answer or {}, annotations={"user": {"delegate": job.annotation}})
