"""Watching a remote job's eventlog: what following a job (following.py) and
making sure a cancel took (cancel.py) both do.
"""

import errno
import syslog

from flux.job.event import RAW as JOB_RAW
from flux.job.event import JobEventWatchFuture

from .reactor import Timer, answered, guard, log


class EventlogWatch:
    """A watch of remote_id's eventlog over the connection remote
    (job-info's eventlog-watch), sent as any request to a target is
    (RemoteInstance.request(): queued while the target reads too little).

    start(): on_event(event) for each event (the eventlog so far, then each
    new one), then on_end(error) once: None at the end of the eventlog (the
    job is inactive), else the OSError the watch ended with (the target's,
    or a FailedRequest's: not sent, or its connection lost).  cancel():
    stop watching; nothing is called after it.

    answer_within: seconds within which the first answer must come (a
    target answers at once with the eventlog so far); if none does, the
    watch is canceled and ends with ETIMEDOUT.  Errors in the callbacks are
    reported against job (guard()).
    """

    def __init__(
        self,
        remote,
        remote_id,
        on_event,
        on_end,
        job=None,
        answer_within=None,
        eventlog="eventlog",
        flags=0,
    ):
        self.remote = remote
        # Its name: "eventlog", or "guest.output" (liveoutput.py, with
        # FLUX_JOB_EVENT_WATCH_WAITCREATE: written once the shell starts).
        self.eventlog = eventlog
        self.flags = flags
        self.remote_id = remote_id
        self.on_event = on_event
        self.on_end = on_end
        self.job = job
        self.answer_within = answer_within
        self.outgoing = None
        self.timer = None
        self.over = False  # ended or canceled: nothing more is called

    def start(self):
        self.outgoing = self.remote.request(
            1024,
            lambda h: JobEventWatchFuture(
                JOB_RAW.event_watch(h, int(self.remote_id), self.eventlog, self.flags)
            ),
            self.on_answer,
            job=self.job,
        )
        if self.answer_within is not None and not self.over:
            self.timer = Timer(
                self.answer_within,
                guard(self.unanswered, self.job, self.remote.runtime),
                self.remote.runtime,
            )
        return self

    @property
    def sent(self):
        """Whether the request has gone out (it may wait in the queue)."""
        return self.outgoing is not None and self.outgoing.sent

    def on_answer(self, future):
        if self.over:
            log(
                syslog.LOG_DEBUG,
                f"answer to a watch of {self.remote_id.f58} on {self.remote.uri}"
                " given up on, ignored",
            )
            return
        self.stop_timer()
        try:
            event = future.get_event()
        except OSError as exc:
            self.end(exc)
            return
        if event is None:
            self.end(None)
            return
        self.on_event(event)

    def end(self, error):
        self.over = True
        self.stop_timer()
        self.on_end(error)

    def unanswered(self):
        if self.over:
            return
        if self.sent:
            answered(self.outgoing.future)  # given up: its bytes no longer count
        self.cancel()
        self.on_end(
            OSError(
                errno.ETIMEDOUT,
                f"its job-info did not answer within {self.answer_within:g}s",
            )
        )

    def cancel(self):
        """Stop watching: a watch still queued is withdrawn, one sent is
        canceled (RemoteInstance.cancel_watch())."""
        if self.over:
            return
        self.over = True
        self.stop_timer()
        if self.outgoing is None or self.outgoing.withdraw():
            return
        self.remote.cancel_watch(self.outgoing.future)

    def stop_timer(self):
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
