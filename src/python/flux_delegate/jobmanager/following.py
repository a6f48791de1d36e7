"""Following: the remote job exists, and its events are followed.

They come through the target's journal (journal.py) or a watch of the
remote job's eventlog (EventlogWatch), and update what is known of its
outcome (eventlog.RemoteOutcome).  Contact lost is sought again for up to
reconnect-timeout (Retrying), and on a connection other than the one the
job is known on, the remote id is checked to still be this job's before it
is watched again.  Its end hands over to Releasing (conclude); an
allocation that never came, to Failover.
"""

import errno
import syslog

from ..eventlog import RemoteOutcome, describe_remote_exception
from .phases import FOLLOWING, SUBMITTING, Phase
from .reactor import guard, log
from .remote import check_identity
from .retry import Retrying
from .watch import EventlogWatch


def nodelist_of(R):
    """{"nodelist": the nodes R names} for an annotation, or {} (no R)."""
    try:
        nodes = R["execution"]["nodelist"]
    except (KeyError, TypeError):
        return {}
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        return {}
    return {"nodelist": ",".join(nodes)}


class Following(Phase):
    """The following phase of one job (job.py holds its state)."""

    __slots__ = ()

    def start(self):
        """The remote job exists (on job.uri): follow it from now on.
        Contact lost is sought again every reconnect-interval; deadline:
        reconnect-timeout after contact was lost (the last event received,
        or the reload), counted afresh after each event."""
        job = self.job
        job.phase = FOLLOWING
        if job.reconnecting is not None:
            job.reconnecting.stop()
        reconnecting = Retrying(
            job.runtime,
            job.uri,
            self.reattach,
            self.out_of_contact,
            wanted=lambda: job.phase == FOLLOWING and job.reconnecting is reconnecting,
            job=job,
        )
        job.reconnecting = reconnecting

    def follow(self, remote):
        job = self.job
        if job.phase != FOLLOWING:
            return
        job.remote = remote
        if remote.lost:
            self.connection_lost(remote, remote.lost)
            return
        remote.listeners.add(job)
        if job.live is not None:
            job.live.follow()  # its output, copied as it comes (liveoutput.py)
        if remote.journal is not None and remote.journal.follow(job, job.remote_id):
            return  # its events come through the target's journal (journal.py)
        # A target answers a watch at once with the eventlog so far.  One
        # that never does (a hung job-info, a request lost as the module
        # was reloaded) would leave the job pending for ever: give up on
        # that watch after submit-timeout and follow again, within
        # reconnect-timeout.
        watch = job.watch = EventlogWatch(
            remote,
            job.remote_id,
            self.on_remote_event,
            self.on_watch_end,
            job=job,
            answer_within=job.runtime.submit_timeout,
        )
        watch.start()
        if not watch.sent and not watch.over:
            log(
                syslog.LOG_DEBUG,
                f"{job.name}: watch queued: {remote.unanswered} bytes unanswered on {job.uri}",
            )

    def on_journal_event(self, remote_id, event, R=None):
        """An event of the remote job from its target's journal, as a
        watch would have brought it later; with alloc, its R (which then
        need not be asked for at the end)."""
        job = self.job
        if job.phase != FOLLOWING or remote_id != job.remote_id:
            return
        if R is not None:
            job.remote_R = R
        self.on_remote_event(event)
        if job.phase != FOLLOWING and event.name == "clean":
            job.runtime.counts["ended-by-journal"] += 1

    def stop(self):
        job = self.job
        job.timers.cancel("identity")
        if job.reconnecting is not None:
            job.reconnecting.stop()
        self.stop_watch()
        if job.remote is not None:
            job.remote.listeners.discard(job)

    def journal_ended(self, remote):
        """The journal that brought this job's events ended: watch its
        eventlog instead (a lost connection is seen to by connection_lost)."""
        job = self.job
        if job.phase == FOLLOWING and job.remote is remote and not remote.lost:
            self.follow(remote)

    def stop_watch(self):
        job = self.job
        watch, job.watch = job.watch, None
        if watch is not None:
            watch.cancel()
        journal = job.remote.journal if job.remote is not None else None
        if journal is not None:
            journal.unfollow(job, job.remote_id)

    def connection_lost(self, remote, reason):
        """The remote job cannot be followed for now (target restarting,
        ssh dropped, its job-info gone...).  It may well live on: follow it
        again once its target answers, for up to reconnect-timeout."""
        job = self.job
        if remote is not job.remote or job.phase != FOLLOWING:
            return
        job.timers.cancel("identity")
        self.stop_watch()
        job.releasing.stop_collecting()  # taken again once it is back
        remote.listeners.discard(job)
        job.lost_reason = reason
        if job.reconnecting.failed(reason):
            log(
                syslog.LOG_INFO,
                f"{job.name}: lost contact with {job.remote_id.f58} on {job.uri}"
                f" ({reason}); reconnecting",
            )

    def out_of_contact(self, reason):
        """No contact for reconnect-timeout (Retrying gave up)."""
        job = self.job
        where = f"remote job {job.remote_id.f58} on {job.uri}"
        if job.reconnecting.connect_failed:
            job.fail(
                f"lost contact with {where} ({job.lost_reason}), and cannot reconnect: {reason}"
            )
        else:
            job.fail(
                f"lost contact with {where} for {job.runtime.reconnect_timeout:g}s: {reason}"
            )

    def reattach(self, remote):
        """Connected again (or after a reload): make sure remote_id is still
        this job's there, then watch it again."""
        job = self.job
        if job.phase != FOLLOWING:
            return
        if remote is job.verified:
            self.watch_again(remote)
            return
        job.remote = remote
        remote.listeners.add(job)  # connection_lost() if it goes meanwhile
        job.timers.start(
            "identity",
            job.runtime.submit_timeout,
            guard(lambda: self.identity_unanswered(remote), job),
        )
        check = job.identity_check = object()
        check_identity(
            remote,
            job.remote_id,
            job.origin,
            lambda verdict, why: self.on_identity(remote, verdict, why, check),
            job=job,
        )

    def identity_unanswered(self, remote):
        job = self.job
        if job.phase == FOLLOWING and job.remote is remote and job.verified is not remote:
            job.identity_check = None  # a late answer no longer counts
            self.connection_lost(
                remote, f"it did not answer within {job.runtime.submit_timeout:g}s"
            )

    def on_identity(self, remote, verdict, why, check):
        job = self.job
        if (
            job.phase != FOLLOWING
            or job.remote is not remote
            or remote.lost
            or check is not job.identity_check
        ):
            return  # superseded, or connection_lost() takes it from here
        job.identity_check = None
        job.timers.cancel("identity")
        where = f"remote job {job.remote_id.f58} on {job.uri}"
        if verdict == "same":
            job.verified = remote
            self.watch_again(remote)
        elif verdict == "gone":
            job.fail(
                f"{where} no longer exists (purged, or the target was replaced"
                " or restarted without its state)",
                cancel_remote=False,
            )
        elif verdict == "other":
            job.fail(
                f"{where} is not this job's: the target is a different"
                f" instance now ({why}); the remote job this job ran as is"
                " lost, and the stranger is left alone",
                cancel_remote=False,
            )
        else:
            self.connection_lost(remote, why)

    def watch_again(self, remote):
        job = self.job
        log(syslog.LOG_DEBUG, f"{job.name}: watching {job.remote_id.f58} on {job.uri} again")
        job.outcome = RemoteOutcome()  # the watch replays the whole eventlog
        self.follow(remote)  # in contact again at its first event

    def on_watch_end(self, error):
        """The watch ended: at the end of the eventlog (error None), or with
        an error."""
        job = self.job
        if job.phase != FOLLOWING:
            log(syslog.LOG_DEBUG, f"{job.name}: end of a watch given up on, ignored")
            return
        job.watch = None
        where = f"remote job {job.remote_id.f58}"
        if error is None:
            job.reconnecting.contact()
            job.releasing.conclude()
        elif error.errno == errno.ENOENT:
            job.fail(
                f"{where} no longer exists on {job.uri} (purged, or the"
                " instance restarted without its state)"
            )
        elif error.errno == errno.EPERM:
            job.fail(f"cannot follow {where} on {job.uri}: {error.strerror or error}")
        else:
            # Anything else is the target going away or coming back (a
            # target shutting down answers ENOSYS before its connection
            # closes), or its job-info not answering: follow again once it
            # answers.
            self.connection_lost(job.remote, error.strerror or str(error))

    def on_remote_event(self, event):
        job = self.job
        if job.phase != FOLLOWING:
            log(syslog.LOG_DEBUG, f"{job.name}: answer to a watch given up on, ignored")
            return
        job.reconnecting.contact()
        job.outcome.update(event.name, event.context)
        if job.moving is not None:
            job.moving.on_remote_event(event)
        if event.name == "alloc":
            # Shown by the local job's state callbacks if it starts now.
            starting = job.starting.wanted()
            job.showing.annotate(post=not starting, state="running", **nodelist_of(job.remote_R))
        job.starting.start()
        if job.failover.requeue_wanted() and not job.outcome.allocated:
            # The target cannot allocate: the remote job will never start,
            # so another target may take the job at once.
            self.stop()
            job.phase = SUBMITTING
            job.failover.next(
                describe_remote_exception(job.remote_id.f58, job.uri, job.outcome.exception),
                started=False,
            )
        elif job.outcome.ended:
            job.releasing.conclude()
        elif (
            event.name == "finish"
            and job.outcome.exception is None
            and (job.live is None or not job.live.taking)
            and job.collecting is None
            and job.stored is None
            and job.storing is None
        ):
            job.releasing.collect()  # its output is complete: take it while the target cleans up
