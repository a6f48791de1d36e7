"""Remote cancel: 'flux cancel LOCALID' reaches the remote job, with retries
until a deadline.
"""

import errno
import syslog
import time

import flux
import flux.job

from .connections import CONNECTION_ERRORS
from .reactor import log
from .remote import check_identity
from .retry import Retrying
from .watch import EventlogWatch


class RemoteCancel:
    """Cancel a remote job, retrying while its target cannot be reached
    (for up to reconnect-timeout); the local job may be gone by then.

    An accepted cancel is not the end of it: a target's job-manager answers
    before its exception event is committed, and one shutting down may
    lose that commit (the job comes back pending after the restart).  So
    the remote job is watched until it is cleaned up, and if the target
    goes away first, canceled again once it is back.
    """

    def __init__(self, job, reason):
        self.job = job
        self.uri = job.uri
        self.remote_id = job.remote_id
        self.id = job.id  # for guard(), as a connection listener
        self.runtime = job.runtime
        self.remote = None  # where the canceled job is watched
        self.watch = None
        self.reason = reason
        self.done = False
        # Deadline: reconnect-timeout from the cancel, however often the
        # target comes and goes meanwhile.
        self.retrying = Retrying(
            self.runtime,
            self.uri,
            self.send,
            self.give_up,
            deadline=time.monotonic() + self.runtime.reconnect_timeout,
        )

    def start(self):
        log(syslog.LOG_INFO, f"{self.job.name}: canceling {self.remote_id.f58} on {self.uri}")
        remote = self.job.remote
        if remote is not None and not remote.lost:
            self.send(remote)
        else:
            self.retrying.start()

    def give_up(self, message):
        self.runtime.log(
            syslog.LOG_ERR,
            f"{self.job.name}: could not cancel remote job {self.remote_id.f58}"
            f" on {self.uri}: {message}; it may still run there",
        )

    def send(self, remote):
        """Cancel over remote, once the remote job is known to be this
        job's there (never a stranger's that took its id)."""
        if remote is self.job.verified:
            self.send_cancel(remote)
            return
        check_identity(
            remote,
            self.remote_id,
            self.job.origin,
            lambda verdict, why: self.on_identity(remote, verdict, why),
        )

    def on_identity(self, remote, verdict, why):
        if verdict == "same":
            self.job.verified = remote
            self.send_cancel(remote)
        elif verdict == "error":
            self.retrying.failed(why)
        else:
            self.done = True
            self.runtime.log(
                syslog.LOG_INFO,
                f"{self.job.name}: not canceling {self.remote_id.f58} on {self.uri}:"
                + (
                    " it no longer exists"
                    if verdict == "gone"
                    else f" it is not this job's ({why})"
                ),
            )

    def send_cancel(self, remote):
        remote.request(
            1024,
            lambda h: flux.job.cancel_async(h, self.remote_id, self.reason),
            lambda future: self.on_answer(future, remote),
        )

    def on_answer(self, future, remote):
        try:
            future.get()
        except OSError as exc:
            if exc.errno in CONNECTION_ERRORS or exc.errno == errno.ENOSYS:
                self.retrying.failed(exc.strerror or str(exc))
            else:  # e.g. the remote job is inactive already
                self.runtime.log(
                    syslog.LOG_INFO,
                    f"{self.job.name}: cancel of {self.remote_id.f58} on {self.uri}:"
                    f" {exc.strerror or exc}",
                )
            return
        except ValueError:
            pass  # an answer that is not JSON, but no error: it is followed
        remote.listeners.add(self)  # connection_lost() if it goes first
        self.remote = remote
        self.watch = EventlogWatch(
            remote, self.remote_id, self.on_remote_event, self.on_watch_end
        ).start()

    def connection_lost(self, remote, reason):
        remote.listeners.discard(self)
        if not self.done and remote is self.remote:
            self.remote = None
            if self.watch is not None:
                self.watch.cancel()
            self.retrying.failed(reason)

    def on_remote_event(self, event):
        """Until the remote job's clean event (or the end of its eventlog)."""
        if self.done:
            return
        if event.name == "clean":
            self.done = True
            if self.remote is not None:
                self.remote.listeners.discard(self)
            self.watch.cancel()

    def on_watch_end(self, error):
        if self.done:
            return
        if error is None:  # the end of the eventlog
            self.done = True
            if self.remote is not None:
                self.remote.listeners.discard(self)
            return
        if self.remote is not None:
            self.remote.listeners.discard(self)
            self.remote = None
        if error.errno not in (errno.ENOENT, errno.EPERM):  # not purged
            self.retrying.failed(error.strerror or str(error))  # the target went away
