"""Retrying: connect to a target, act on the connection, and do it again
after each failure, every reconnect-interval, until a deadline.

What the remote cancel (cancel.py), the search after an interrupted submit
(recovery.py) and the reconnect of a followed job (following.py) all do; each
chooses its own deadline rule where it makes its Retrying.
"""

import time

from .reactor import Timer, guard


class Retrying:
    """Connect to uri (runtime.connections), call act(remote) with the
    connection, and, on each failure, wait reconnect-interval and connect
    again, until the deadline; then on_give_up(reason), with the reason
    of the last failure.

    A failure is a connect that failed (connect_failed is then True), or
    whatever act() started going wrong: its owner calls failed(reason)
    (the request failed or went unanswered, the connection was lost...).
    A failure while a retry is already pending changes nothing but the
    reason: one retry at a time.

    deadline: a time.monotonic() time, fixed; or None: reconnect-timeout
    after contact was lost, counted from the first failure (or start())
    since the last contact().

    wanted(): whether the work is still wanted, asked before connecting and
    when the connect answers: unwanted, the answer is ignored.  job: what
    errors in the callbacks are reported against (guard()).
    """

    def __init__(self, runtime, uri, act, on_give_up, deadline=None, wanted=None, job=None):
        self.runtime = runtime
        self.uri = uri
        self.act = act
        self.on_give_up = on_give_up
        self.per_loss = deadline is None
        self.deadline = deadline
        self.wanted = wanted or (lambda: True)
        self.job = job
        self.timer = None  # the wait before the next connect
        self.connect_failed = False  # whether the last failure was a connect's

    def start(self, delay=None):
        """Connect now, or after delay seconds."""
        self.lost()
        self.stop()
        if delay is None:
            self.connect()
        else:
            self.timer = Timer(delay, guard(self.connect, self.job, self.runtime), self.runtime)

    def connect(self):
        self.timer = None
        if self.wanted():
            self.runtime.connections.get(
                self.uri, self.connected, self.connect_error, job=self.job
            )

    def connected(self, remote):
        if self.wanted():
            self.act(remote)

    def connect_error(self, message):
        if self.wanted():
            self.failed(message, connecting=True)

    def failed(self, reason, connecting=False):
        """Try again after reconnect-interval; or, past the deadline, give
        up (on_give_up(reason)).  True if it tries again."""
        self.lost()
        self.connect_failed = connecting
        if time.monotonic() >= self.deadline:
            self.stop()
            self.on_give_up(reason)
            return False
        if self.timer is None:
            self.timer = Timer(
                self.runtime.reconnect_interval,
                guard(self.connect, self.job, self.runtime),
                self.runtime,
            )
        return True

    def lost(self):
        """Contact is lost: a per-loss deadline starts now (if not yet)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.runtime.reconnect_timeout

    def contact(self):
        """In contact again: a per-loss deadline starts afresh at the next
        failure."""
        if self.per_loss:
            self.deadline = None

    @property
    def waiting(self):
        """Whether a connect is due (start(delay) or a retry)."""
        return self.timer is not None

    def stop(self):
        """No connect is due any more (one under way answers wanted())."""
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
