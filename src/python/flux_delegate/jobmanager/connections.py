"""Connections to targets: one connect attempt per URI at a time, run by a
bounded set of helper threads (flux_open() blocks), shared by every job
waiting for that target.
"""

import collections
import errno
import os
import queue
import signal
import socket
import syslog
import threading
import weakref

import flux
import flux.job
import flux.uri
from flux.constants import FLUX_POLLIN
from flux.core.inner import lib

from ..targets import SELF_DELEGATION, same_instance
from .journal import RemoteJournal
from .reactor import Timer, free_watcher, guard
from .outgoing import NotSent, shut_down, socket_of
from .remote import RemoteInstance, close_handle

#: Errors after which a connection is not reused.
CONNECTION_ERRORS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.EPIPE,
    errno.ENOTCONN,
    errno.EHOSTUNREACH,
}


#: Most helper threads (opening connections, oversized submits) running at
#: once, over all targets; more wait their turn.
MAX_HELPER_THREADS = 8


class Helpers:
    """Blocking work done off the job-manager's thread: flux_open() (which
    retries connect() with sleeps and waits for the target's handshake, for
    ssh:// the whole login) and oversized sends.

    At most MAX_HELPER_THREADS threads at once, over all targets, started
    in order; each result comes back to the job-manager's reactor through a
    pipe and an fd watcher, where on_done(result) runs (result: what the
    work returned, or the exception it raised).  A thread only runs its
    work: it never touches jobtap or the job-manager's reactor.

    A child process a helper starts (ssh, for ssh:// URIs) gets no blocked
    signals: the broker blocks them all in its module threads, and a child
    inheriting that mask would ignore the SIGTERM that ends it.
    """

    def __init__(self, runtime, limit=MAX_HELPER_THREADS):
        self.runtime = runtime
        self.limit = limit
        self.waiting = collections.deque()  # HelperTasks not started yet
        self.running = set()  # started, result not handled yet
        self.results = queue.SimpleQueue()
        self.lock = threading.Lock()  # threads, closed, the pipe's write end
        self.threads_alive = 0  # threads that may still write to the pipe
        self.closed = False
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watcher = runtime.handle.fd_watcher_create(
            self.rfd, self.on_readable, events=FLUX_POLLIN
        )
        self.watcher.start()

    def start(self, name, work, on_done):
        """Run work(task) on a helper thread, now or when one is free."""
        task = HelperTask(self, name, work, on_done)
        self.waiting.append(task)
        self.start_waiting()
        return task

    def start_waiting(self):
        while self.waiting and len(self.running) < self.limit and not self.closed:
            task = self.waiting.popleft()
            if task.withdrawn:
                continue
            with self.lock:
                self.running.add(task)
                self.threads_alive += 1
            task.launched = True  # no withdrawing it from now on
            thread = threading.Thread(target=task.run, name=f"delegate-{task.name}")
            thread.daemon = True
            thread.start()

    def on_readable(self, *unused):
        """fd watcher: drain the pipe first, whatever happens next, or the
        (level-triggered) watcher would fire again and again."""
        try:
            while os.read(self.rfd, 512):
                pass
        except Exception:  # pylint: disable=broad-except
            pass
        guard(self.on_results, owner=self.runtime)()

    def on_results(self):
        while True:
            try:
                task, result = self.results.get_nowait()
            except queue.Empty:
                break
            with self.lock:
                self.running.discard(task)
            guard(task.on_done, owner=self.runtime)(result)
        self.start_waiting()

    def threads(self):
        return len(self.running)

    def close(self):
        """Unload: no more results.  Threads still running finish on their
        own; the last one closes the pipe's write end (closing it under
        them would let a write land in whatever file reuses its number).
        A result already posted and not handled yet (a connection opened)
        is closed here: nobody takes it any more."""
        self.waiting.clear()
        free_watcher(self.watcher)
        for task in list(self.running):
            task.give_up()
        with self.lock:
            self.closed = True
            os.close(self.rfd)
            if not self.threads_alive:
                os.close(self.wfd)
        while True:
            try:
                unused, result = self.results.get_nowait()
            except queue.Empty:
                break
            if isinstance(result, flux.Flux):
                close_handle(result)


class HelperTask:
    """One piece of work for a helper thread (Helpers.start())."""

    def __init__(self, helpers, name, work, on_done):
        self.helpers = helpers
        self.name = name
        self.work = work
        self.on_done = on_done
        self.withdrawn = False
        self.launched = False  # a thread was started for it
        self.tid = None  # the thread's, once it runs
        self.given_up = False
        self.interrupt = None  # stops what the work waits on (give_up())
        self.lock = threading.Lock()

    @property
    def started(self):
        return self.launched

    def withdraw(self):
        """Drop the task if no thread has started it; True if dropped."""
        if self.started or self.withdrawn:
            return False
        self.withdrawn = True
        return True

    def run(self):
        """On the helper thread."""
        self.tid = threading.get_native_id()
        try:
            self.helpers.runtime.jobtap.clean_child_signals()
            result = self.work(self)
        except BaseException as exc:  # pylint: disable=broad-except
            result = exc
        helpers = self.helpers
        with helpers.lock:
            helpers.threads_alive -= 1
            if helpers.closed:
                helpers.running.discard(self)
                if not helpers.threads_alive:
                    os.close(helpers.wfd)
                if isinstance(result, flux.Flux):
                    close_handle(result)  # here: no reactor has it
                return
            helpers.results.put((self, result))
            try:
                os.write(helpers.wfd, b"\0")
            except OSError:
                pass

    def on_give_up(self, interrupt):
        """On the helper thread: what give_up() is to call to stop the
        work's wait (called at once if it was given up already)."""
        with self.lock:
            self.interrupt = interrupt
            if not self.given_up or interrupt is None:
                return
        interrupt()

    def give_up(self):
        """No one waits for the result any more: stop the work's wait and
        end the processes it started, so that the thread ends."""
        with self.lock:  # held while interrupting: the work may not close
            self.given_up = True  # what the interrupt acts on meanwhile
            if self.interrupt is not None:
                try:
                    self.interrupt()
                except OSError:
                    pass
        self.end_children()

    def end_children(self):
        """SIGTERM the processes this task's thread started (the ssh of a
        connect given up): its flux_open() then fails, and the thread
        ends.  Children are listed per thread by /proc."""
        if self.tid is None:
            return
        try:
            with open(f"/proc/self/task/{self.tid}/children") as fp:
                pids = [int(pid) for pid in fp.read().split()]
        except (OSError, ValueError):
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


def open_connection(uri, timeout, task, own_uri=None, hostname=None):
    """On a helper thread: flux_open(uri).  For a local:// URI the
    broker's handshake (one byte, sent once it accepts the connection) is
    awaited first on a connection of our own, which the job-manager can
    shut down once no job waits any more (task.give_up()), and which gives
    up by itself after timeout: flux_open() would wait for it for ever, and
    a target that accepts and never answers would keep the thread.

    own_uri: this instance's local-uri: a URI naming its socket by another
    path (a link) is refused here, where a stat may take its time."""
    if own_uri and same_instance(uri, own_uri, hostname or socket.gethostname()):
        raise OSError(errno.ELOOP, f"{SELF_DELEGATION}: it names this instance's own socket")
    if uri.startswith("local://"):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout *= 2  # a backstop: give_up() usually comes first
        probe.settimeout(timeout)
        try:
            task.on_give_up(lambda: probe.shutdown(socket.SHUT_RDWR))
            probe.connect(flux.uri.JobURI(uri).path)
            if not probe.recv(1) and task.given_up:
                raise OSError(errno.ECANCELED, "given up")
        except socket.timeout:
            raise OSError(
                errno.ETIMEDOUT, f"the broker accepted, but did not answer within {timeout:g}s"
            )
        except OSError:
            if task.given_up:
                raise
            # flux_open() says what is wrong, in flux's words
        finally:
            task.on_give_up(None)  # not the probe's fd once it is closed
            probe.close()
    return flux.Flux(uri)


class Connections:
    """One connection per target URI, opened once and shared by every job.

    A connection is opened by a helper thread (Helpers): one attempt per
    target at a time, however many jobs wait for it, each job with its own
    connect-timeout.  An attempt all of whose jobs gave up is withdrawn if
    it has not started, and its ssh ended if it has; a hung attempt (a
    target that accepts and never answers) is never doubled: later jobs
    wait for it too.
    """

    def __init__(self, runtime, timeout):
        self.runtime = runtime
        self.timeout = timeout
        self.open = {}  # uri -> RemoteInstance
        self.waiters = {}  # uri -> [Waiter]
        self.opening = {}  # uri -> HelperTask of the attempt in progress
        # Every connection this load made, while referenced (a lost one,
        # by the jobs that used it): closed at unload, if not already.  A
        # lost one is closed (RemoteInstance.close()), not kept.
        self.made = weakref.WeakSet()

    def get(self, uri, on_open, on_error, job=None):
        """Call on_open(remote) with the connection to uri, once open, or
        on_error(message)."""
        remote = self.open.get(uri)
        if remote is not None:
            on_open(remote)
            return
        owner = self.runtime
        waiter = Waiter(self, uri, guard(on_open, job, owner), guard(on_error, job, owner))
        self.waiters.setdefault(uri, []).append(waiter)
        if uri not in self.opening:
            timeout = self.timeout
            attempt = []
            attempt.append(
                self.runtime.helpers.start(
                    "connect",
                    lambda task: open_connection(
                        uri, timeout, task, self.runtime.local_uri, self.runtime.hostname
                    ),
                    lambda result: self.on_result(uri, result, attempt[0]),
                )
            )
            self.opening[uri] = attempt[0]

    def on_result(self, uri, result, attempt):
        current = self.opening.get(uri) is attempt
        if current:
            del self.opening[uri]
        if isinstance(result, BaseException):
            message = getattr(result, "strerror", None) or str(result)
            self.runtime.log(syslog.LOG_INFO, f"cannot connect to {uri}: {message}")
            if current:  # an attempt given up on answers no one
                for waiter in self.waiters.pop(uri, []):
                    waiter.finish(None, message)
            return
        waiters = self.waiters.pop(uri, [])
        if uri in self.open:
            # Two attempts both got through (one was given up on): keep
            # the connection in use.
            close_handle(result)
            for waiter in waiters:
                waiter.finish(self.open[uri], None)
            return
        try:
            remote = RemoteInstance(uri, result, self.runtime)
        except Exception as exc:  # pylint: disable=broad-except
            # Whatever went wrong, every waiting job gets an answer.
            self.runtime.log_exception(f"setting up the connection to {uri}")
            message = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
            for waiter in waiters:
                waiter.finish(None, message)
            return
        self.open[uri] = remote
        self.made.add(remote)
        self.runtime.log(syslog.LOG_INFO, f"connected to {uri}")
        if self.runtime.journal:
            # Asked before any job is sent here, so that it sees their submits.
            remote.journal = RemoteJournal(remote).start()
        for waiter in waiters:
            waiter.finish(remote, None)

    def given_up(self, waiter):
        """A job stopped waiting for uri's connection: if it was the last,
        the attempt is withdrawn, or its ssh (if any) ended."""
        waiters = self.waiters.get(waiter.uri, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if waiters:
            return
        self.waiters.pop(waiter.uri, None)
        attempt = self.opening.pop(waiter.uri, None)
        if attempt is not None and not attempt.withdraw():
            # The next job for this target starts a new attempt instead of
            # joining one that is being ended.
            attempt.give_up()

    def forget(self, remote, reason):
        if self.open.get(remote.uri) is remote:
            del self.open[remote.uri]
        self.runtime.log(syslog.LOG_INFO, f"connection to {remote.uri} closed: {reason}")

    def close(self):
        """Unload: no more connects (Helpers.close() ends those started),
        and every connection closed (RemoteInstance.shutdown())."""
        for attempt in self.opening.values():
            attempt.withdraw()
        self.opening.clear()
        for waiters in self.waiters.values():
            for waiter in waiters:
                waiter.timer.cancel()
        self.waiters.clear()
        self.open.clear()
        for remote in list(self.made):
            remote.shutdown()

    def draining(self):
        """Connections still open after the unload (RemoteInstance.shutdown())."""
        return [remote for remote in self.made if remote.draining is not None]


class Waiter:
    """A job waiting for a connection, with its own timeout."""

    def __init__(self, connections, uri, on_open, on_error):
        self.connections = connections
        self.uri = uri
        self.on_open = on_open
        self.on_error = on_error
        self.timer = Timer(
            connections.timeout,
            guard(self.expire, owner=connections.runtime),
            connections.runtime,
        )

    def finish(self, remote, message):
        self.timer.cancel()
        if remote is not None:
            self.on_open(remote)
        else:
            self.on_error(message)

    def expire(self, *unused):
        if self not in self.connections.waiters.get(self.uri, []):
            return
        attempt = self.connections.opening.get(self.uri)
        self.connections.given_up(self)
        if attempt is not None and not attempt.started:
            self.on_error(
                f"not tried within {self.connections.timeout:g}s: all"
                f" {MAX_HELPER_THREADS} connection helpers were busy"
            )
        else:
            self.on_error(f"no answer within {self.connections.timeout:g}s")


def submit_on_own_connection(uri, spec, timeout, task):
    """On a helper thread: submit an oversized jobspec over a connection
    of its own (flux_send() may wait there, until the task is given up),
    waiting for the answer up to timeout (the submit's own): a target
    that never reads the submit, or whose job-ingest never answers, must
    not keep the thread, nor, after MAX_HELPER_THREADS of them, every
    connection to every target."""
    try:
        handle = open_connection(uri, timeout, task)
    except OSError as exc:
        raise NotSent(exc) from exc
    # flux_send() waits for room as long as it takes, and a target that
    # stopped reading (SIGSTOP, a hung ssh) never makes any: the submit's
    # timeout gives the task up (Submitting.on_submit_timeout), which shuts
    # the socket down, and the send fails.
    fd = socket_of(lib.flux_pollfd(handle.handle))
    if fd is not None:
        task.on_give_up(lambda: shut_down(fd))
    try:
        future = flux.job.submit_async(handle, spec)
        future.wait_for(timeout)
        return future.get_id()
    finally:
        task.on_give_up(None)  # before the fd is closed, and maybe reused
        close_handle(handle)


class HelperAnswer:
    """The answer to a request a helper thread sent, as a future has it."""

    def __init__(self, result):
        self.result = result
        self.sent = not isinstance(result, NotSent)

    def get(self):
        if isinstance(self.result, BaseException):
            if not isinstance(self.result, OSError):
                raise OSError(errno.EPROTO, f"{type(self.result).__name__}: {self.result}")
            raise self.result
        return self.result

    get_id = get
