"""Requests to a target: each sent, or queued until its connection's
socket has room for it (a send never blocks the job-manager), and answered
as a lost connection would be when it breaks.
"""

import errno
import fcntl
import os
import socket
import stat
import struct
import termios

import flux.future

from ..text import shown
from .reactor import guard, then


def forget(future):
    """A future made on a connection being closed: destroyed now (its
    answers, if any are still to come, are never read; no callback runs).

    flux's bindings would keep it for ever: they hold every future with a
    continuation until its last answer (flux.future._THEN_HANDLES), which
    on a closed connection never comes; and, as each refers to itself
    (the handle its continuation gets), even one let go of waits for the
    garbage collector.  Meanwhile it would keep its connection's handle
    (flux_future_set_flux() takes a reference) and with it the socket and
    reactor.  So it is taken out of that table, marked as needing no
    cancel request (one sent when it is collected would go to a closed
    connection and fail on the broker's stderr), and destroyed
    (flux_future_destroy(), what leaving 'with future:' does): no
    continuation runs for it any more, and libflux drops answers that
    still come for it (while a connection drains: see shutdown())."""
    if hasattr(future, "needs_cancel"):
        future.needs_cancel = False
    future.stop()
    future.delegate_unanswered = None
    pending = getattr(flux.future, "_THEN_HANDLES", None)
    if pending is not None:
        pending.pop(future, None)
    future.__exit__(None, None, None)


class Outgoing:
    """A request to a target: sent, or waiting in its connection's queue."""

    def __init__(self, remote, nbytes, send, callback, job, guarded):
        self.remote = remote
        self.nbytes = nbytes
        self.send = send
        self.callback = callback
        self.job = job
        self.guarded = guarded
        self.future = None
        self.canceled = False

    @property
    def sent(self):
        return self.future is not None

    def fail(self, error, sent=False):
        """Answer the request with error ('sent': it may have reached the
        target)."""
        self.future = FailedRequest(error, sent)
        if self.guarded:
            guard(self.callback, self.job, self.remote.runtime)(self.future)
        else:
            self.callback(self.future)

    def send_now(self):
        try:
            future = self.send(self.remote.handle)
        except OSError as exc:
            self.fail(exc)  # not sent (e.g. the connection broke)
            return
        self.future = future
        self.remote.futures.add(future)
        self.remote.sent.add(self)
        self.remote.unanswered += self.nbytes
        self.remote.in_flight.add(self)
        future.delegate_unanswered = self
        then(future, self.callback, job=self.job, guarded=self.guarded)

    def drop(self, reason):
        """Its connection is closed (lost, or the plugin unloaded): let go
        of the request's future, answered or not (a future keeps its
        handle); what is left answers as a lost connection would."""
        self.remote.in_flight.discard(self)
        future = self.future
        if future is not None and not isinstance(future, FailedRequest):
            forget(future)
            self.future = FailedRequest(
                OSError(errno.ECONNRESET, f"the connection was lost: {reason}"), sent=True
            )

    def withdraw(self):
        """Withdraw the request if it is still queued; True if it was."""
        if self.future is None and self in self.remote.queue:
            self.remote.queue.remove(self)
            self.canceled = True
            return True
        return False


class FailedRequest:
    """Stands in for the future of a request that failed on our side: not
    sent, or sent on a connection that then broke ('sent')."""

    def __init__(self, error, sent=False):
        self.error = error
        self.sent = sent

    def get(self):
        raise self.error

    get_id = get_event = get_jobinfo = get

    def cancel(self, stop=False):
        pass


#: Why a connection closed at unload is closed.
UNLOADED = "the plugin was unloaded"


#: Where the socket of a connection cannot be found: bytes of requests a
#: target may leave unanswered before further requests wait their turn.
SEND_BUDGET = 128 * 1024


def socket_of(pollfd):
    """The socket behind a handle's poll fd (an epoll fd whose watched fds
    /proc lists), or None if there is none."""
    try:
        with open(f"/proc/self/fdinfo/{pollfd}") as fp:
            fds = [int(line.split()[1]) for line in fp if line.startswith("tfd:")]
        for fd in fds:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                return fd
    except (OSError, ValueError, IndexError):
        pass
    return None


def shut_down(fd):
    """Shut down the socket fd (its owner still closes it): a send or a
    receive waiting on it, on any thread, fails at once."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


class SendBuffer:
    """The send buffer of a connection's socket.

    libflux writes a message whole: when the socket's buffer has no room
    for it, flux_send() waits (poll for POLLOUT) until the target has read
    enough, and on the job-manager's thread a target that stops reading
    would stall everything.  So a request is written only when the buffer
    has room for all of it (its room is the buffer's size less what the
    target has not read yet, SIOCOUTQ); and one too large for even an empty
    buffer is never written on the job-manager's thread at all.
    """

    #: Asked of the kernel for each connection: it grants up to
    #: net.core.wmem_max (twice that, for its own accounting).
    WANTED = 4 * 1024 * 1024

    def __init__(self, fd):
        self.fd = fd
        sock = socket.socket(fileno=fd)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.WANTED)
            except OSError:
                pass
            self.size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        finally:
            sock.detach()  # the fd stays the connection's

    @classmethod
    def of_handle(cls, pollfd):
        """The SendBuffer of the socket behind a handle's poll fd, or None
        if there is none."""
        fd = socket_of(pollfd)
        return cls(fd) if fd is not None else None

    def unread(self):
        """Bytes written and not yet read by the other end (with the
        kernel's overhead)."""
        buf = fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ
        return struct.unpack("i", buf)[0]

    @staticmethod
    def cost(nbytes):
        """What nbytes take in the buffer: the kernel counts its own
        bookkeeping (a few hundred bytes to a page per buffer of data)."""
        return nbytes + nbytes // 4 + 8192

    def has_room(self, nbytes):
        return self.cost(nbytes) <= self.size - self.unread()

    def could_hold(self, nbytes):
        """Whether nbytes would fit once the other end has read enough to
        wake a writer (POLLOUT comes when under a quarter is unread)."""
        return self.cost(nbytes) <= self.size // 2


def answer_of(get):
    """get(): the value of a future, with any failure to read the answer
    (an error string that is not UTF-8, a malformed payload) as an OSError
    (EPROTO), so that it is handled as an error answer, not lost."""
    try:
        return get()
    except OSError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise OSError(errno.EPROTO, f"unreadable answer: {type(exc).__name__}: {shown(str(exc))}")


class NotSent(OSError):
    """A request that never left (no connection): another target may take
    the job."""

    def __init__(self, exc):
        super().__init__(exc.errno, exc.strerror or str(exc))
