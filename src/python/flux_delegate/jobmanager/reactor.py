"""The job-manager's reactor, made safe for Python: text logged as data,
guarded callbacks and continuations, self-freeing timers.
"""

import syslog

import flux
import flux.core.handle
from flux.core.inner import ffi, lib

from ..names import EXCEPTION_TYPE
from . import current


def log(level, message):
    if current.runtime is not None:
        current.runtime.log(level, message)


def log_text(handle, level, text):
    """Log text to the broker log as it is.

    flux's Handle.log() hands its text to flux_log() as the printf
    *format*: a '%n' or '%s' in a user's value, a URI, a remote job's
    exception note or a traceback would make the broker write or read
    through garbage pointers.  Here the text is always an argument of a
    constant "%s" format."""
    data = str(text).encode("utf-8", "backslashreplace").replace(b"\0", b"\\0")
    lib.flux_log(handle.handle, int(level), b"%s", ffi.new("char[]", data))


def harden_bindings():
    """Make flux's bindings safe to run inside the broker, for every handle
    in this process (the handler's own, and any a site policy makes):

    - Handle.log() logs its text as it is (log_text), never as a format:
      the bindings document it as taking no C formatting.
    - An exception escaping a Python callback that a reactor runs (a
      future's continuation, a timer, a watcher) is logged with its
      traceback and goes no further.  The bindings would stop the reactor
      with it, and the reactor here is the job-manager's: the instance
      would exit.  The handler's own callbacks are guarded (guard()) so
      that their errors fail the job concerned; this catches the rest.
    - This thread (the job-manager's) counts as running a reactor, which it
      always is: the bindings' future.get() would otherwise reset SIGINT's
      disposition around every call (to make Ctrl-C work in a script), and
      in the broker signals are the broker's.
    """
    handle_class = flux.core.handle.Flux
    if getattr(handle_class, "delegate_hardened", False):
        return
    stop_error = handle_class.reactor_stop_error

    def safe_log(self, level, fstring):
        log_text(self, level, fstring)

    def reactor_stop_error(self, reactor=None):
        exception = type(self).set_exception(None)
        if exception is None:  # not from a failed callback: as before
            stop_error(self, reactor)
            return
        log_callback_exception(exception)

    handle_class.log = safe_log
    handle_class.reactor_stop_error = reactor_stop_error
    handle_class.reactor_enter()  # never left: see above
    handle_class.delegate_hardened = True


def log_callback_exception(exception):
    """Log an exception that a reactor callback let escape."""
    import traceback

    text = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    log(syslog.LOG_ERR, f"uncaught in a reactor callback (ignored): {text}")


def guard(callback, job=None, owner=None):
    """callback made safe for the job-manager's reactor.

    In flux's bindings an exception escaping a future continuation or a
    watcher callback stops the reactor it runs on, here the job-manager's.
    Everything the reactor calls goes through this guard: an exception is
    reported against 'job' (log line with traceback + DelegationFailure) or,
    without a job, logged; it goes no further.  Callbacks of a handler that
    has since been unloaded do nothing.  'owner' is the Runtime the callback
    belongs to (default: the job's, else the current one).
    """
    owner = owner or getattr(job, "runtime", None) or current.runtime

    def guarded(*args):
        if owner is None or owner.unloaded:
            return
        try:
            callback(*args)
        except BaseException:  # pylint: disable=broad-except
            # SystemExit, KeyboardInterrupt from site code too: past here
            # the bindings only print them, and the job would wait for ever.
            where = getattr(callback, "__qualname__", str(callback))
            try:
                if job is not None:
                    owner.jobtap.report_exception(job.id, where, EXCEPTION_TYPE)
                else:
                    owner.log_exception(where)
            except Exception:  # pylint: disable=broad-except
                pass

    return guarded


class Timer:
    """A one-shot timer on the job-manager's reactor that frees itself when
    it fires or is canceled: flux's bindings keep every watcher their
    handle made until it is destroyed, and a broker runs for months."""

    def __init__(self, seconds, callback, owner=None):
        self.callback = callback  # guarded by the caller (see guard())
        self.watcher = (owner or current.runtime).handle.timer_watcher_create(seconds, self.fire)
        self.watcher.start()

    def fire(self, *unused):
        self.cancel()
        self.callback()

    def cancel(self):
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            free_watcher(watcher)


class Timers:
    """The one-shot timers of one object, by name, in one place: starting
    a name again replaces its timer, and cancel() with no name cancels them
    all (the object is done)."""

    def __init__(self, owner=None):
        self.owner = owner  # the Runtime whose handle they go on
        self.pending = {}  # name -> Timer

    def start(self, name, seconds, callback):
        """callback() in seconds (guarded by the caller: see guard())."""
        self.cancel(name)

        def fire():
            if self.pending.get(name) is timer:
                del self.pending[name]
            callback()

        timer = Timer(seconds, fire, self.owner)
        self.pending[name] = timer
        return timer

    def cancel(self, name=None):
        for key in list(self.pending) if name is None else [name]:
            timer = self.pending.pop(key, None)
            if timer is not None:
                timer.cancel()

    def __contains__(self, name):
        return name in self.pending


def free_watcher(watcher):
    """Stop a watcher and destroy it (also from its own callback: libev no
    longer looks at a watcher once its callback runs)."""
    watcher.stop()
    watcher.destroy()


def then(future, callback, job=None, guarded=True):
    """future.then(callback): the one way a continuation is attached, to a
    local future or (through RemoteInstance.request()) a remote one.
    Guarded (see guard()) unless guarded=False (a callback that must run
    even after an unload, and guards itself).  The first answer of a
    request to a target also releases its bytes (RemoteInstance.request).
    No libflux timeouts: a remote future's timer would sit on its
    connection's reactor, which runs only when a message arrives; timeouts
    are job-manager timers."""
    call = guard(callback, job) if guarded else callback

    def continuation(fut):
        answered(fut)
        call(fut)

    future.then(continuation)
    return future


def answered(future):
    """Release the bytes of a request to a target: it has been answered."""
    pending = getattr(future, "delegate_unanswered", None)
    if pending is not None:
        future.delegate_unanswered = None
        outgoing = pending
        outgoing.remote.in_flight.discard(outgoing)
        outgoing.remote.release(outgoing.nbytes)
