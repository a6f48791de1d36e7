"""Remote I/O: an open connection to a target, and the identity check of
a remote job.  The requests sent on it (never more than its socket buffer
can take without blocking): outgoing.py.
"""

import errno
import json
import time
import weakref

import flux
import flux.future
import flux.job
from flux.constants import FLUX_POLLERR, FLUX_POLLIN, FLUX_POLLOUT
from flux.core.inner import ffi, lib

from ..eventlog import describe_origin
from ..jobspec import origin_of, same_origin
from ..preflight import FeasibleAnswers
from .outgoing import SEND_BUDGET, UNLOADED, FailedRequest, Outgoing, SendBuffer, answer_of, forget
from .reactor import Timer, free_watcher, guard
from .schedule import TargetSchedule, remote_sender


def check_identity(remote, remote_id, origin, on_verdict, job=None):
    """Is remote_id, on the connection remote, the job whose origin
    (ORIGIN_ATTRIBUTE) is origin?  on_verdict(verdict, why) with verdict
    "same", "gone" (no such job there), "other" (a job with that id made
    for someone else: a different instance at that URI) or "error" (no
    answer; why says what went wrong).  Errors in on_verdict are reported
    against job."""

    def on_jobspec(future):
        try:
            jobspec = answer_of(lambda: future.get_decode()["jobspec"])
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                on_verdict("gone", exc.strerror or str(exc))
            elif exc.errno == errno.EPERM:
                on_verdict("other", "it belongs to another user")
            else:
                on_verdict("error", exc.strerror or str(exc))
            return
        theirs = origin_of(jobspec)
        if same_origin(theirs, origin):
            on_verdict("same", None)
        elif theirs is None:
            on_verdict("other", "it records no origin")
        else:
            on_verdict("other", f"it was made for {describe_origin(theirs)}")

    remote.request(
        1024,
        lambda h: flux.job.kvslookup.job_info_lookup(h, remote_id, keys=["jobspec"]),
        on_jobspec,
        job=job,
    )


def payload_size(obj):
    """Bytes a request carrying obj (or its JSON text) takes on the wire,
    roughly (a signed J is base64: a third more)."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return len(text) * 4 // 3 + 1024


class RemoteInstance:
    """An open connection to a target.

    Its handle runs on a reactor of its own, not the job-manager's: when a
    connection breaks, libflux stops the reactor the handle is on
    (flux_reactor_stop_error() in its message dispatch), and that must never
    be the job-manager's.  The job-manager's reactor watches the handle's
    poll fd and runs the handle's reactor, without waiting, whenever it has
    something to do; the continuations of remote futures so run on the
    job-manager's thread as before.  No timers go on the handle's reactor
    (they would only run when a message arrives): timeouts are job-manager
    timers.

    What it holds in the broker (the handle's socket and poll fds, its
    reactor, a watcher on the job-manager's reactor) is let go by close(),
    when the connection is lost, and shutdown(), when the plugin is
    unloaded: never left to the garbage collector, which a future still
    awaiting an answer (flux's bindings keep those for ever) would stop.
    """

    def __init__(self, uri, handle, runtime):
        self.uri = uri
        self.handle = handle
        self.runtime = runtime
        self.lost = None  # why the connection is gone, once it is
        self.listeners = set()  # jobs to tell if it is lost
        # The target's "feasible" answers, for a while (preflight-cache).
        self.feasible_answers = FeasibleAnswers(runtime.preflight_cache)
        # Its plan, for earliest_start's estimates, read when needed.
        self.schedule = TargetSchedule(uri, remote_sender(self), runtime.estimate_cache)
        self.journal = None  # RemoteJournal, once open (Connections)
        self.last_heard = time.monotonic()  # when a message last came from it
        # The handle's own reactor, made now (a handle opened by flux_open()
        # has none yet) and destroyed with the handle: its last reference
        # may be a future's, after the connection is closed.
        self.reactor = lib.flux_get_reactor(handle.handle)
        if self.reactor == ffi.NULL or self.reactor == lib.flux_get_reactor(runtime.handle.handle):
            raise OSError(ffi.errno or errno.EINVAL, f"cannot set up a reactor for {uri}")
        fd = lib.flux_pollfd(handle.handle)
        if fd < 0:
            raise OSError(ffi.errno, f"cannot poll the connection to {uri}")
        self.watcher = runtime.handle.fd_watcher_create(
            fd, self.on_ready, events=FLUX_POLLIN | FLUX_POLLERR
        )
        self.watcher.start()
        self.more = None
        self.counters = ffi.new("flux_msgcounters_t *")
        self.unanswered = 0  # bytes of requests sent and not yet answered
        self.in_flight = set()  # Outgoing requests sent and not yet answered
        self.queue = []  # Outgoing requests waiting for the target to read
        self.opened = time.time()
        # The socket the requests are written to (to the target's broker,
        # or to ssh), to see how much room its buffer has left.
        self.socket = SendBuffer.of_handle(fd)
        self.writable = None  # POLLOUT watcher while requests wait for room
        self.draining = None  # Drain: unloaded, closed once answered (shutdown())
        # Every future made on this connection, while it lives: once the
        # connection is closed, none is answered any more (close()).
        self.futures = weakref.WeakSet()
        # Every request sent on it whose Outgoing lives (shutdown()).
        self.sent = weakref.WeakSet()

    def request(self, nbytes, send, callback, job=None, guarded=True):
        """Send a request: send(handle) -> future, whose answers go to
        callback(future) (through guard() unless guarded=False).  Sent now,
        or, if the target has left too much unanswered for it to fit safely
        in the socket's buffer, queued until enough answers have come back
        (backpressure: a send never blocks the job-manager).  Returns the
        Outgoing request."""
        outgoing = Outgoing(self, nbytes, send, callback, job, guarded)
        if self.lost:
            outgoing.fail(OSError(errno.ENOTCONN, f"the connection to {self.uri} is lost"))
            return outgoing
        self.queue.append(outgoing)
        self.flush()
        return outgoing

    def fits(self, nbytes):
        """Whether a request of nbytes can be written now without blocking:
        the socket's buffer has room for all of it (libflux writes a whole
        message before it returns, waiting for room if there is none)."""
        if self.socket is not None:
            return self.socket.has_room(nbytes)
        return not self.unanswered or self.unanswered + nbytes <= SEND_BUDGET

    def oversized(self, nbytes):
        """Whether a request of nbytes is too large to be written without
        blocking even once the target has read everything."""
        if self.socket is not None:
            return not self.socket.could_hold(nbytes)
        return nbytes > SEND_BUDGET

    def flush(self):
        """Send queued requests while they fit; wait for room otherwise."""
        while self.queue and not self.lost:
            head = self.queue[0]
            if not self.fits(head.nbytes):
                self.wait_for_room()
                return
            self.queue.pop(0)
            head.send_now()
        self.stop_waiting_for_room()

    def cancel_watch(self, future):
        """Stop a watch made on this connection: its cancel request is
        sent only if the socket has room for it now (flux sends it itself,
        outside request(), and would wait for room); otherwise, or on a
        lost connection, the watch is dropped without one (the target
        ends it when the connection goes, or the job's eventlog does)."""
        if isinstance(future, FailedRequest):
            return  # let go of already (its connection is closed)
        if not self.lost and self.fits(1024):
            try:
                future.cancel(stop=True)
                return
            except OSError:
                pass
        future.needs_cancel = False
        future.stop()

    def wait_for_room(self):
        if self.socket is None or self.writable is not None:
            return  # answers coming back call flush() (release())
        self.writable = self.runtime.handle.fd_watcher_create(
            self.socket.fd, self.on_writable, events=FLUX_POLLOUT
        )
        self.writable.start()

    def stop_waiting_for_room(self):
        watcher, self.writable = self.writable, None
        if watcher is not None:
            free_watcher(watcher)

    def on_writable(self, *unused):
        """The target read enough for the socket to take more."""
        try:
            self.flush()
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_exception(f"sending to {self.uri}")

    def release(self, nbytes):
        self.unanswered = max(0, self.unanswered - nbytes)
        self.flush()
        if self.draining is not None:
            self.draining.answered()

    def on_ready(self, *unused):
        """Run the handle's reactor until it has nothing more to do now;
        never raises (the job-manager's reactor calls it).

        One pass of the handle's reactor reads one message; a future it
        fulfills runs its continuation on the next pass (libflux defers
        continuations to a check watcher).  So: passes while messages are
        queued or were read, then two more.  A message read in what was
        to be the last pass must still get its two: its arrival's wakeup
        was consumed by that pass (the handle's poll fd is edge-triggered),
        and nothing would come back for its continuation.
        """
        try:
            if self.more is not None:
                self.more.cancel()
                self.more = None
            if self.lost:
                return  # closed: the handle is no longer ours
            extra = 2
            received = self.received()
            # A bounded turn: other events of the job-manager's reactor
            # (its own jobs' messages) get theirs in between.
            deadline = time.monotonic() + 0.01
            for _ in range(64):
                if time.monotonic() > deadline:
                    break
                if self.lost:
                    return
                if lib.flux_reactor_run(self.reactor, lib.FLUX_REACTOR_NOWAIT) < 0:
                    self.close("the connection was lost")
                    return
                if self.lost:
                    return
                events = lib.flux_pollevents(self.handle.handle)
                if events < 0 or events & FLUX_POLLERR:
                    self.close("the connection was lost")
                    return
                now = self.received()
                if now != received:
                    self.last_heard = time.monotonic()
                if events & FLUX_POLLIN or now != received:
                    received = now
                    extra = 2
                elif extra == 0:
                    return
                else:
                    extra -= 1
            # More is queued: come back on the next pass of the reactor.
            self.more = Timer(0.0, self.on_ready, self.runtime)
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_exception(f"connection to {self.uri}")

    def received(self):
        """How many messages the handle has read so far."""
        lib.flux_get_msgcounters(self.handle.handle, self.counters)
        c = self.counters
        return c.response_rx + c.request_rx + c.event_rx + c.control_rx

    def close(self, reason):
        """The connection is gone: stop watching it, let go of its handle,
        fail what was asked of it (no answer can come any more), and tell
        its jobs."""
        if self.lost:
            return
        self.lost = reason
        self.let_go()
        self.runtime.connections.forget(self, reason)
        queued, self.queue = self.queue, []
        in_flight, self.in_flight = list(self.in_flight), set()
        for outgoing in queued:  # never sent: say so
            outgoing.fail(OSError(errno.ENOTCONN, f"the connection was lost: {reason}"))
        for outgoing in in_flight:  # sent: no answer can come any more
            outgoing.fail(
                OSError(errno.ECONNRESET, f"the connection was lost: {reason}"),
                sent=True,
            )
        for job in list(self.listeners):
            guard(job.connection_lost, job, self.runtime)(self, reason)
        # Answered requests too: a job keeps its requests (a submit, long
        # after its answer), and their futures would keep the handle.
        for outgoing in list(self.sent):
            outgoing.drop(reason)
        if self.draining is not None:  # unloaded: nothing more to await
            self.draining.done()

    def shutdown(self):
        """The plugin is unloaded: close the connection (the target then
        ends the watches made on it) and let go of every future made on it.

        Requests whose answer is acted on even after an unload (a submit:
        a remote job created for a local job that has ended meanwhile is
        canceled, one for a job still waiting is logged for the next load
        to find) keep the connection open until they are answered, for at
        most twice submit-timeout: by then the next load looks on the
        target for that job itself (Recovery).  Nothing else is answered:
        no callback of an unloaded plugin runs, requests still queued are
        never sent (the next load submits or follows again), and the next
        load follows its jobs on a connection of its own."""
        self.listeners.clear()
        for outgoing in self.queue:
            outgoing.canceled = True
        self.queue = []
        self.stop_waiting_for_room()
        for outgoing in list(self.sent):
            if outgoing.guarded:
                outgoing.drop(UNLOADED)
        if not self.lost and awaited(self):
            self.draining = Drain(self)
            return
        self.unloaded()

    def unloaded(self):
        """Unloaded, and nothing more awaited: close the connection now."""
        self.draining = None
        if not self.lost:
            self.lost = UNLOADED
            self.let_go()
        self.queue, self.in_flight = [], set()
        for outgoing in list(self.sent):
            outgoing.drop(UNLOADED)

    def watchers(self):
        """Its watchers on the job-manager's reactor (the fd watcher, and
        timers: see Runtime.unload())."""
        timers = (self.more,) + (self.draining.timers() if self.draining else ())
        found = [self.watcher, self.writable] + [t.watcher for t in timers if t is not None]
        return {w for w in found if w is not None}

    def let_go(self):
        """Stop watching the connection and close it: its watchers on the
        job-manager's reactor are destroyed, then every future made on it
        (forget(): each holds a reference to the handle), and the handle is
        closed, which destroys it and its reactor."""
        free_watcher(self.watcher)
        self.stop_waiting_for_room()
        if self.more is not None:
            self.more.cancel()
            self.more = None
        for future in list(self.futures):
            forget(future)
        handle, self.handle = self.handle, None
        self.reactor = None  # the handle's: not to be run any more
        self.socket = None  # its fd number may be another file's soon
        close_handle(handle)


def close_handle(handle):
    """Close a handle this plugin opened (flux_close(): it is destroyed
    with its last reference).  flux's Flux.close() refuses, lest the handle
    be closed again when the wrapper is collected; leaving the wrapper's
    context (what 'with flux.Flux(uri) as h:' does) closes it once and
    marks it closed."""
    handle.__exit__(None, None, None)


def awaited(remote):
    """Whether a request acted on after an unload is still unanswered."""
    return any(not outgoing.guarded for outgoing in remote.in_flight)


def safely(remote, callback):
    """callback, for a timer of a connection that outlives its plugin's
    unload: an error is logged, and goes no further."""

    def run(*unused):
        try:
            callback()
        except Exception:  # pylint: disable=broad-except
            remote.runtime.log_exception(f"connection to {remote.uri}")

    return run


class Drain:
    """A connection kept open after its plugin's unload until the requests
    acted on even then are answered, for at most twice submit-timeout
    (RemoteInstance.shutdown())."""

    def __init__(self, remote):
        self.remote = remote
        # Not guard()ed: these run after the unload, on purpose.
        self.deadline = Timer(2 * remote.runtime.submit_timeout, safely(remote, self.done), remote.runtime)
        self.check = None

    def timers(self):
        return (self.deadline, self.check)

    def answered(self):
        """After an answer: closed once nothing awaited is left.  Checked
        on the next pass of the reactor, never in the answer's callback:
        that callback may send another request (a withdraw) that must get
        out first."""
        if self.check is None:
            self.check = Timer(0.0, safely(self.remote, self.after_answer), self.remote.runtime)

    def after_answer(self):
        self.check = None
        if self.remote.draining is self and (self.remote.lost or not awaited(self.remote)):
            self.done()

    def done(self):
        for timer in self.timers():
            if timer is not None:
                timer.cancel()
        self.check = None
        if self.remote.draining is self:
            self.remote.unloaded()
