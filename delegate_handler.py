"""flux-delegate handler: send a job to another Flux instance and mirror it.

delegate.so (the jobtap shim) embeds Python in the job-manager and calls
three functions of this file:

    plugin_load(conf)            when the plugin is loaded (conf: its KEY=VALUE
                                 arguments, e.g. {"handler": "/path"})
    plugin_unload()              on 'flux jobtap remove delegate.so'
    callback(topic, args, job)   for jobtap callbacks: job.dependency.delegate
                                 for every job that asks for delegation, and
                                 job.state.* / job.event.* for jobs this
                                 handler took on (job is then the object it
                                 attached with delegate_jobtap.job_attach)

Everything here runs on the job-manager's own thread and reactor, so
nothing may block: remote work is done with futures and continuations
(then()), never future.get() on a future that is not yet fulfilled.  A
Python exception never reaches the broker: in a callback delegate.so turns
it into a rejected submit or a DelegationFailure exception; in a
continuation then() below does the same through
delegate_jobtap.report_exception().

The life of a delegated job (local job id L, remote job id R):

  submit      job.dependency.delegate: the value is checked (a bad one is
              rejected), the job is held with dependency "delegated".
  wait        other dependencies (afterok:...) are honoured: the handler
              reads the job's eventlog from the job-manager and waits until
              "delegated" is the only dependency left.
  submit R    the target URI is resolved, the remote instance connected
              (one connection per URI, reused), and the jobspec submitted
              there without the local dependencies and delegation
              attributes.  L gets a "delegated" event {jobid: R, uri}.
  follow      R's eventlog is watched.  L stays pending (DEPEND), so a
              restart of this instance neither cancels nor forgets it: on
              reload the "delegated" event is found again and R re-followed.
  end         R failed with an exception: L gets a DelegationFailure
              exception naming R and the exception.
              R finished: L is released and run through to its end without
              resources or processes (alloc-bypass, exec test mode) and
              finishes with R's wait status, so 'flux job status L' gives
              R's exit code.
  cancel      'flux cancel L' cancels R; R canceled in the target ends L
              with DelegationFailure.

Any failure before R exists ends L with a severity 0 DelegationFailure
whose note says what went wrong and with which URI.
"""

import copy
import errno
import json
import os
import queue
import socket
import syslog
import threading
import time

try:
    import flux
    import flux.constants
    import flux.job
    import flux.kvs
    import flux.uri
    from flux.constants import FLUX_POLLIN
    from flux.core.inner import ffi, lib, raw
    from flux.job import JobID
except ImportError:  # pragma: no cover
    # Inside the broker flux is always importable.  Outside it (unit tests
    # on a machine without flux-core) the pure decision logic below still
    # imports; whatever needs flux says so when called.
    flux = None

# Set by plugin_load(): the module delegate.so provides.
jobtap = None

#: Description of the dependency that holds a delegated job locally.
DEPENDENCY = "delegated"

#: Job exception type for every delegation failure (the C delegate plugin's).
EXCEPTION_TYPE = "DelegationFailure"

#: Jobspec attributes that belong to the local instance only.
LOCAL_ONLY_ATTRIBUTES = ("dependencies", "delegate")

#: Default seconds to wait for a target to answer a submit.
DEFAULT_SUBMIT_TIMEOUT = 30.0

#: Default seconds to wait for a connection to a target (an ssh:// login).
DEFAULT_CONNECT_TIMEOUT = 30.0

#: How long the local job "runs" once the remote one has finished: only
#: long enough for job-exec to post start and finish (test exec mode).
RELEASE_RUN_DURATION = "0.001s"

USAGE = (
    "use --dependency=delegate:URI with a Flux URI "
    "(local:///path/to/socket, ssh://host/path/to/socket) "
    "or the job id of a Flux instance running as a job here"
)


# ---------------------------------------------------------------------------
# Pure decision logic (no handle, no I/O): unit tested on its own.
# ---------------------------------------------------------------------------


class Target:
    """What a delegate:VALUE dependency names, before any resolution.

    kind is "uri" (a URI flux_open() takes as it is), "jobid" (a job of
    this instance, or a path of jobs, running a Flux instance) or
    "scheme" (another URI scheme, which this handler cannot open).
    """

    def __init__(self, value, kind, scheme, jobids=None):
        self.value = value
        self.kind = kind
        self.scheme = scheme
        self.jobids = jobids or []

    def __repr__(self):
        return f"Target({self.value!r}, kind={self.kind!r})"


def parse_target(value):
    """Parse the value of a delegate dependency.

    Raises ValueError for a value that is wrong on its face (empty, not a
    URI): such a submit is rejected.  Anything that can only be found out by
    trying (an unknown scheme, a socket that is not there, a job that runs
    no instance) is left to resolve_*, and fails the job instead.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"delegate needs a target: {USAGE}")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"'{value}' is not a URI (it contains white space)")
    scheme = uri_scheme(value)
    if scheme == "":
        # A bare job id, as 'flux proxy JOBID' takes it.
        try:
            jobids = parse_jobid_path(value)
        except ValueError:
            raise ValueError(f"'{value}' is neither a URI nor a job id: {USAGE}")
        return Target(value, "jobid", "jobid", jobids)
    if scheme in ("local", "ssh"):
        return Target(value, "uri", scheme)
    if scheme == "jobid":
        return Target(value, "jobid", scheme)
    return Target(value, "scheme", scheme)


def uri_scheme(value):
    """The scheme of a URI, "" if none (flux's own URI parser)."""
    if flux is not None:
        return flux.uri.URIResolverURI(value).scheme.lower()
    head, sep, _ = value.partition(":")
    return head.lower() if sep and head.isalpha() else ""


def parse_jobid_path(path):
    """'ƒA/ƒB' -> [JobID(A), JobID(B)]: a hierarchy of jobs, as jobid: URIs
    take it.  Raises ValueError if any element is not a job id."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise ValueError("no job id")
    if flux is None:
        raise ValueError("job ids need flux's Python bindings")
    jobids = []
    for part in parts:
        try:
            jobids.append(JobID(part))
        except (OSError, ValueError, TypeError):
            raise ValueError(f"'{part}' is not a job id")
    return jobids


def check_local_or_ssh(value):
    """Validate a local:// or ssh:// URI; returns it (raises ValueError)."""
    uri = flux.uri.JobURI(value)
    if uri.scheme == "ssh" and not uri.netloc:
        raise ValueError(f"'{value}' names no host")
    if not uri.path or uri.path == "/":
        raise ValueError(f"'{value}' names no socket path")
    return value


def remote_jobspec(jobspec, environment=None):
    """The jobspec to submit remotely: the local one without what only
    means something here (dependencies, delegation attributes), with the
    environment put back (the job-manager keeps jobspecs without it)."""
    spec = copy.deepcopy(jobspec)
    system = spec.setdefault("attributes", {}).setdefault("system", {})
    for key in LOCAL_ONLY_ATTRIBUTES:
        system.pop(key, None)
    if environment is not None:
        system["environment"] = environment
    return spec


def outstanding_dependencies(eventlog):
    """Descriptions of the dependencies still held, from a job eventlog."""
    pending = set()
    for entry in eventlog:
        context = entry.get("context") or {}
        if entry.get("name") == "dependency-add":
            pending.add(context.get("description"))
        elif entry.get("name") == "dependency-remove":
            pending.discard(context.get("description"))
    return pending


def find_delegation(eventlog):
    """Context of the job's "delegated" event ({jobid, uri}), or None."""
    found = None
    for entry in eventlog:
        if entry.get("name") == "delegated":
            found = entry.get("context") or {}
    return found


class RemoteOutcome:
    """What the remote job's eventlog says about its end."""

    def __init__(self):
        self.exception = None  # context of the first fatal exception
        self.wait_status = None  # from "finish"
        self.started = False
        self.ended = False  # "clean" seen: nothing more will happen

    def update(self, name, context):
        context = context or {}
        if name == "exception":
            if context.get("severity", 0) == 0 and self.exception is None:
                self.exception = context
        elif name == "start":
            self.started = True
        elif name == "finish":
            self.wait_status = context.get("status")
        elif name == "clean":
            self.ended = True


def describe_remote_exception(remote_id, uri, exception):
    """Note of the local DelegationFailure for a remote job exception."""
    kind = exception.get("type", "unknown")
    note = exception.get("note") or ""
    where = f"remote job {remote_id} on {uri}"
    if kind == "cancel":
        return f"{where} was canceled" + (f": {note}" if note else "")
    return f"{where} failed: {kind} exception" + (f": {note}" if note else "")


def release_updates(wait_status):
    """Jobspec updates that make job-exec 'run' the released local job for a
    moment and report wait_status, without job shells (test exec mode)."""
    return {
        "attributes.system.exec.test": {
            "run_duration": RELEASE_RUN_DURATION,
            "wait_status": int(wait_status),
        }
    }


def local_R(hostname, now=None):
    """A minimal R (RFC 20) for the released local job: one core of rank 0.
    It is never allocated from the scheduler (alloc-bypass)."""
    return {
        "version": 1,
        "execution": {
            "R_lite": [{"rank": "0", "children": {"core": "0"}}],
            "nodelist": [hostname],
            "starttime": float(now if now is not None else time.time()),
            "expiration": 0.0,
        },
    }


# ---------------------------------------------------------------------------
# Runtime: the job-manager handle, connections to targets, logging.
# ---------------------------------------------------------------------------


def log(level, message):
    if runtime is not None:
        runtime.log(level, message)


def guard(callback, job=None, owner=None):
    """callback made safe for the job-manager's reactor.

    In flux's bindings an exception escaping a future continuation or a
    watcher callback stops the reactor it runs on, here the job-manager's.
    Everything the reactor calls goes through this guard: an exception is
    reported against 'job' (log line with traceback + DelegationFailure) or,
    without a job, logged; it goes no further.  Callbacks of a handler that
    has since been unloaded do nothing.  'owner' is the Runtime the callback
    belongs to (default: the current one).
    """
    owner = owner or runtime

    def guarded(*args):
        if owner is None or owner.unloaded:
            return
        try:
            callback(*args)
        except Exception:  # pylint: disable=broad-except
            where = getattr(callback, "__qualname__", str(callback))
            try:
                if job is not None:
                    jobtap.report_exception(job.id, where)
                else:
                    owner.log_exception(where)
            except Exception:  # pylint: disable=broad-except
                pass

    return guarded


def then(future, callback, job=None, timeout=-1.0):
    """future.then(callback), guarded (see guard())."""
    future.then(guard(callback, job), timeout=timeout)
    return future


class RemoteInstance:
    """An open connection to a target, on the job-manager's reactor (its
    futures' continuations run there like any other job-manager event)."""

    def __init__(self, uri, handle, reactor):
        self.uri = uri
        self.handle = handle
        raw.flux_set_reactor(handle.handle, reactor)
        self.opened = time.time()


#: Errors after which a connection is not reused.
CONNECTION_ERRORS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.EPIPE,
    errno.ENOTCONN,
    errno.EHOSTUNREACH,
    errno.ETIMEDOUT,
    errno.ENOENT,
}


class Connections:
    """One connection per target URI, opened once and shared by every job.

    flux_open() blocks: the local connector retries connect() with sleeps,
    and both the local and ssh connectors wait for the target broker's
    handshake (for ssh://, the whole ssh login).  On the job-manager's
    thread that would stall every job, for minutes if a host is down.  So
    a connection is opened on a short-lived helper thread (one per target,
    not per job), and the result comes back to the job-manager's reactor
    through a pipe and an fd watcher.  Jobs waiting for it give up after
    connect-timeout.
    """

    def __init__(self, runtime, timeout):
        self.runtime = runtime
        self.timeout = timeout
        self.open = {}  # uri -> RemoteInstance
        self.waiters = {}  # uri -> [Waiter]
        self.opening = set()  # uris with a helper thread at work
        # Connections dropped after an error stay referenced: futures still
        # in flight on them must not see their handle closed under them.
        self.retired = []
        self.results = queue.SimpleQueue()
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watcher = runtime.handle.fd_watcher_create(
            self.rfd, self.on_readable, events=FLUX_POLLIN
        )
        self.watcher.start()

    def get(self, uri, on_open, on_error, job=None):
        """Call on_open(remote) with the connection to uri, once open, or
        on_error(message)."""
        remote = self.open.get(uri)
        if remote is not None:
            on_open(remote)
            return
        owner = self.runtime
        waiter = Waiter(
            self, uri, guard(on_open, job, owner), guard(on_error, job, owner)
        )
        self.waiters.setdefault(uri, []).append(waiter)
        if uri not in self.opening:
            self.opening.add(uri)
            thread = threading.Thread(
                target=self.open_in_thread, args=(uri,), name="delegate-connect"
            )
            thread.daemon = True
            thread.start()

    def open_in_thread(self, uri):
        """Helper thread: only flux_open(), nothing that touches jobtap or
        the job-manager's reactor."""
        try:
            result = flux.Flux(uri)
        except Exception as exc:  # pylint: disable=broad-except
            result = exc
        self.results.put((uri, result))
        try:
            os.write(self.wfd, b"\0")
        except OSError:
            pass

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
                uri, result = self.results.get_nowait()
            except queue.Empty:
                return
            self.opening.discard(uri)
            waiters = self.waiters.pop(uri, [])
            if isinstance(result, Exception):
                message = getattr(result, "strerror", None) or str(result)
                self.runtime.log(syslog.LOG_INFO, f"cannot connect to {uri}: {message}")
                for waiter in waiters:
                    waiter.finish(None, message)
                continue
            remote = RemoteInstance(uri, result, self.runtime.reactor)
            self.open[uri] = remote
            self.runtime.log(syslog.LOG_INFO, f"connected to {uri}")
            for waiter in waiters:
                waiter.finish(remote, None)

    def failed(self, remote, error):
        """Stop reusing a connection that failed; the next job reconnects."""
        code = getattr(error, "errno", None)
        if code in CONNECTION_ERRORS and self.open.get(remote.uri) is remote:
            del self.open[remote.uri]
            self.retired.append(remote)
            self.runtime.log(syslog.LOG_INFO, f"dropped connection to {remote.uri}: {error}")

    def close(self):
        self.watcher.stop()


class Waiter:
    """A job waiting for a connection, with its own timeout."""

    def __init__(self, connections, uri, on_open, on_error):
        self.connections = connections
        self.uri = uri
        self.on_open = on_open
        self.on_error = on_error
        self.timer = connections.runtime.handle.timer_watcher_create(
            connections.timeout, guard(self.expire, owner=connections.runtime)
        )
        self.timer.start()

    def finish(self, remote, message):
        self.timer.stop()
        if remote is not None:
            self.on_open(remote)
        else:
            self.on_error(message)

    def expire(self, *unused):
        waiters = self.connections.waiters.get(self.uri, [])
        if self in waiters:
            waiters.remove(self)
            self.on_error(f"no answer within {self.connections.timeout:g}s")


class Runtime:
    """State of one loaded handler: plugin conf, the job-manager's handle,
    connections, and the delegated jobs it follows."""

    def __init__(self, conf):
        self.conf = dict(conf or {})
        self.unloaded = False
        self.handle = flux.Flux(handle=ffi.cast("flux_t *", jobtap.handle()))
        # The job-manager owns its handle: the wrapper must never close it.
        self.handle.incref()
        self.reactor = raw.flux_get_reactor(self.handle.handle)
        self.hostname = socket.gethostname()
        self.submit_timeout = float(
            self.conf.get("submit-timeout", DEFAULT_SUBMIT_TIMEOUT)
        )
        connect_timeout = float(self.conf.get("connect-timeout", DEFAULT_CONNECT_TIMEOUT))
        self.jobs = {}
        self.connections = Connections(self, connect_timeout)

    def log(self, level, message):
        try:
            self.handle.log(level, f"delegate: {message}")
        except Exception:  # pylint: disable=broad-except
            pass

    def log_exception(self, where):
        import traceback

        self.log(syslog.LOG_ERR, f"{where}: {traceback.format_exc()}")

    def query(self):
        phases = {}
        for job in self.jobs.values():
            phases[job.phase] = phases.get(job.phase, 0) + 1
        return {
            "connections": sorted(self.connections.open),
            "jobs": phases,
            "submit-timeout": self.submit_timeout,
            "connect-timeout": self.connections.timeout,
        }

    def unload(self):
        self.unloaded = True
        self.connections.close()
        for job in list(self.jobs.values()):
            job.stop_following()


runtime = None


# ---------------------------------------------------------------------------
# A delegated job: the state machine described at the top of this file.
# ---------------------------------------------------------------------------

WAITING = "waiting"  # held; waiting for other dependencies
SUBMITTING = "submitting"  # resolving, connecting, submitting remotely
DELEGATED = "delegated"  # remote job exists and is followed
RELEASING = "releasing"  # remote finished; local job run through to its end
ENDED = "ended"  # nothing left to do


class DelegatedJob:
    def __init__(self, args, target):
        self.id = int(args["id"])
        self.jobspec = args["jobspec"]
        self.target = target
        self.phase = WAITING
        self.uri = None
        self.remote = None
        self.remote_id = None
        self.outcome = RemoteOutcome()
        self.watch = None
        self.checking = False
        self.recheck = False
        self.canceled_reason = None

    @property
    def name(self):
        return JobID(self.id).f58

    # -- failure -----------------------------------------------------------

    def fail(self, what):
        """End the local job with a DelegationFailure (severity 0)."""
        if self.phase == ENDED:
            log(syslog.LOG_DEBUG, f"{self.name}: after end: {what}")
            return
        self.phase = ENDED
        self.stop_following()
        log(syslog.LOG_ERR, f"{self.name}: {what}")
        jobtap.raise_exception(self.id, EXCEPTION_TYPE, 0, f"delegate: {what}")

    # -- waiting for the other dependencies --------------------------------

    def check_ready(self):
        """Read the job's eventlog from the job-manager (asynchronously):
        delegate when "delegated" is the only dependency left, or re-follow
        the remote job if this job was delegated before (plugin reload,
        instance restart)."""
        if self.phase != WAITING:
            return
        if self.checking:
            self.recheck = True
            return
        self.checking = True
        future = runtime.handle.rpc(
            "job-manager.getattr", {"id": self.id, "attrs": ["eventlog"]}
        )
        then(future, self.on_eventlog, job=self)

    def on_eventlog(self, future):
        self.checking = False
        eventlog = future.get()["eventlog"]
        if self.phase != WAITING:
            return
        previous = find_delegation(eventlog)
        if previous is not None:
            self.resume(previous)
        elif not (outstanding_dependencies(eventlog) - {DEPENDENCY}):
            self.start()
        elif self.recheck:
            self.recheck = False
            self.check_ready()

    # -- submitting remotely -----------------------------------------------

    def start(self):
        """Fetch the job's environment (only in J), then resolve and submit."""
        self.phase = SUBMITTING
        future = flux.job.kvslookup.job_info_lookup(
            runtime.handle, self.id, keys=["J"]
        )
        then(future, self.on_J, job=self)

    def on_J(self, future):
        J = future.get()["J"]
        # J is the signed original jobspec; unwrapping it is local work.
        original = lib.flux_unwrap_string(J.encode(), False, ffi.NULL, ffi.NULL)
        if original == ffi.NULL:
            raise OSError(ffi.errno, "cannot unwrap the job's J")
        try:
            spec = json.loads(ffi.string(original).decode())
        finally:
            lib.free(original)
        environment = spec.get("attributes", {}).get("system", {}).get("environment")
        self.remote_spec = remote_jobspec(self.jobspec, environment)
        resolve_target(self, self.target, self.submit, self.fail)

    def submit(self, uri):
        if self.phase != SUBMITTING:
            return
        self.uri = uri
        runtime.connections.get(uri, self.submit_to, self.connect_failed, job=self)

    def connect_failed(self, message):
        self.fail(f"cannot connect to {self.uri}: {message}")

    def submit_to(self, remote):
        if self.phase != SUBMITTING:
            return
        self.remote = remote
        future = flux.job.submit_async(remote.handle, json.dumps(self.remote_spec))
        then(future, self.on_submitted, job=self, timeout=runtime.submit_timeout)

    def on_submitted(self, future):
        try:
            remote_id = future.get_id()
        except OSError as exc:
            runtime.connections.failed(self.remote, exc)
            if exc.errno == errno.ETIMEDOUT:
                reason = f"no answer within {runtime.submit_timeout:g}s"
            else:
                reason = exc.strerror or str(exc)
            self.fail(f"submit to {self.uri} failed: {reason}")
            return
        self.remote_id = JobID(remote_id)
        if self.phase != SUBMITTING:
            # The local job ended while the submit was in flight: the
            # remote job must not run on its own.
            self.cancel_remote(self.canceled_reason or "local job ended")
            return
        self.phase = DELEGATED
        jobtap.post_event(
            self.id, "delegated", {"jobid": int(self.remote_id), "uri": self.uri}
        )
        log(
            syslog.LOG_INFO,
            f"{self.name}: delegated to {self.uri} as {self.remote_id.f58}",
        )
        self.follow(self.remote)

    def resume(self, delegation):
        """Follow again a remote job delegated before a reload/restart."""
        self.phase = DELEGATED
        self.uri = delegation.get("uri")
        self.remote_id = JobID(delegation.get("jobid"))
        log(
            syslog.LOG_INFO,
            f"{self.name}: following {self.remote_id.f58} on {self.uri} again",
        )
        runtime.connections.get(self.uri, self.follow, self.reconnect_failed, job=self)

    def reconnect_failed(self, message):
        self.fail(f"cannot reconnect to {self.uri}: {message}")

    # -- following the remote job ------------------------------------------

    def follow(self, remote):
        if self.phase != DELEGATED:
            return
        self.remote = remote
        self.watch = flux.job.event_watch_async(remote.handle, self.remote_id)
        then(self.watch, self.on_remote_event, job=self)

    def stop_following(self):
        watch, self.watch = self.watch, None
        if watch is not None:
            try:
                watch.cancel(stop=True)
            except OSError:
                pass

    def on_remote_event(self, future):
        if self.phase != DELEGATED:
            return
        try:
            event = future.get_event()
        except OSError as exc:
            runtime.connections.failed(self.remote, exc)
            self.fail(
                f"lost track of remote job {self.remote_id.f58} on {self.uri}:"
                f" {exc.strerror or exc}"
            )
            return
        if event is None:
            self.conclude()
            return
        self.outcome.update(event.name, event.context)
        if self.outcome.ended:
            self.conclude()

    def conclude(self):
        """The remote job has ended: end the local one the same way."""
        if self.phase != DELEGATED:
            return
        self.stop_following()
        exception = self.outcome.exception
        if exception is not None:
            self.fail(describe_remote_exception(self.remote_id.f58, self.uri, exception))
        elif self.outcome.wait_status is None:
            self.fail(
                f"remote job {self.remote_id.f58} on {self.uri} ended"
                " without an exit status"
            )
        else:
            self.release(self.outcome.wait_status)

    def release(self, wait_status):
        """Let the local job finish with wait_status, using no resources.

        Order matters: the state is set first, because removing the
        dependency runs the next state callbacks (job.state.sched, below)
        before it returns.
        """
        self.phase = RELEASING
        self.wait_status = wait_status
        jobtap.jobspec_update(self.id, release_updates(wait_status))
        jobtap.set_flag(self.id, "alloc-bypass")
        jobtap.dependency_remove(self.id, DEPENDENCY)

    # -- jobtap callbacks for this job -------------------------------------

    def on_depend(self, args):
        self.check_ready()

    def on_dependency_removed(self, args):
        self.check_ready()

    def on_sched(self, args):
        """Released job reaches SCHED: give it R ourselves (alloc-bypass),
        committed to the KVS before the alloc event, like alloc-bypass.so."""
        if self.phase != RELEASING:
            return None
        R = local_R(runtime.hostname)
        txn = flux.kvs.KVSTxn(runtime.handle, JobID(self.id).kvs)
        txn.put("R", R)
        then(txn.commit_async(), self.on_R_committed, job=self)
        return {"R": R}

    def on_R_committed(self, future):
        future.get()
        jobtap.post_event(self.id, "alloc", {"bypass": True})

    def on_cleanup(self, args):
        """The local job ends.  If that is not our doing, the remote job
        (or the submit in flight) is canceled: nothing runs on its own."""
        if self.phase in (RELEASING, ENDED):
            self.phase = ENDED
            return
        reason = local_end_reason(args, self.name)
        previous, self.phase = self.phase, ENDED
        self.canceled_reason = reason
        if previous == DELEGATED:
            self.stop_following()
            self.cancel_remote(reason)

    def on_inactive(self, args):
        self.stop_following()
        runtime.jobs.pop(self.id, None)

    def cancel_remote(self, reason):
        remote, remote_id, uri = self.remote, self.remote_id, self.uri
        log(syslog.LOG_INFO, f"{self.name}: canceling {remote_id.f58} on {uri}")
        future = flux.job.cancel_async(remote.handle, remote_id, reason)

        def on_canceled(fut):
            try:
                fut.get()
            except OSError as exc:
                log(
                    syslog.LOG_ERR,
                    f"{self.name}: cancel of {remote_id.f58} on {uri} failed:"
                    f" {exc.strerror or exc}",
                )

        then(future, on_canceled)


def local_end_reason(args, name):
    """Why the local job ended, as a reason for canceling the remote one."""
    event = args.get("end_event") or {}
    context = event.get("context") or {}
    if event.get("name") == "exception":
        note = context.get("note") or ""
        return (
            f"{context.get('type', 'exception')} in the source instance"
            f" (job {name})" + (f": {note}" if note else "")
        )
    return f"job {name} ended in the source instance"


# ---------------------------------------------------------------------------
# Resolving a target to a URI (asynchronously where it needs a lookup).
# ---------------------------------------------------------------------------


def resolve_target(job, target, on_uri, on_error):
    """Call on_uri(uri) with the URI to connect to, or on_error(message).
    Errors in the callbacks are reported against job."""
    if target.kind == "uri":
        try:
            on_uri(check_local_or_ssh(target.value))
        except ValueError as exc:
            on_error(f"cannot use {target.value}: {exc}")
        return
    if target.kind == "jobid":
        try:
            jobids = target.jobids or parse_jobid_path(
                flux.uri.URIResolverURI(target.value).path
            )
        except ValueError as exc:
            on_error(f"cannot use {target.value}: {exc}")
            return
        JobidResolution(job, target.value, jobids, on_uri, on_error).step(runtime.handle)
        return
    on_error(
        f"cannot use {target.value}: unknown URI scheme '{target.scheme}'"
        " (delegate takes local://, ssh:// and job ids; resolve other"
        f" schemes with 'flux uri {target.value}' first)"
    )


class JobidResolution:
    """Resolve a job id (or a path of them) to the URI of the Flux instance
    that job runs, the way flux's jobid URI resolver does (job-list's
    "uri" annotation of a running job), but with futures: the resolver
    itself would block the job-manager."""

    def __init__(self, job, value, jobids, on_uri, on_error):
        self.job = job
        self.value = value
        self.jobids = list(jobids)
        self.on_uri = on_uri
        self.on_error = on_error
        self.hostname = None

    def step(self, handle):
        jobid = self.jobids[0]
        future = flux.job.job_list_id(handle, jobid, attrs=["state", "annotations"])
        then(future, self.on_job, job=self.job)

    def on_job(self, future):
        jobid = self.jobids.pop(0)
        try:
            info = future.get_jobinfo()
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.on_error(f"cannot use {self.value}: job {jobid.f58} not found")
            else:
                self.on_error(
                    f"cannot use {self.value}: looking up job {jobid.f58}:"
                    f" {exc.strerror or exc}"
                )
            return
        if info.state != "RUN":
            self.on_error(
                f"cannot use {self.value}: job {jobid.f58} is not running"
                f" (state {info.state})"
            )
            return
        uri = getattr(info.user, "uri", None)
        if not uri:
            self.on_error(
                f"cannot use {self.value}: job {jobid.f58} runs no Flux instance"
                " (it has no URI)"
            )
            return
        job_uri = flux.uri.JobURI(str(uri))
        # On this host, connect directly rather than through ssh.
        if job_uri.netloc in ("", runtime.hostname, self.hostname):
            resolved = job_uri.local
        else:
            resolved = job_uri.remote
        self.hostname = job_uri.netloc or self.hostname
        if not self.jobids:
            self.on_uri(resolved)
            return
        # A job inside that instance: look it up there.
        self.resolved = resolved
        runtime.connections.get(resolved, self.step_into, self.connect_failed, job=self.job)

    def step_into(self, remote):
        self.step(remote.handle)

    def connect_failed(self, message):
        self.on_error(f"cannot use {self.value}: cannot connect to {self.resolved}: {message}")


# ---------------------------------------------------------------------------
# Entry points called by delegate.so.
# ---------------------------------------------------------------------------


def on_dependency(args):
    """job.dependency.delegate: take the job on, or reject it."""
    dependency = args.get("dependency") or {}
    target = parse_target(dependency.get("value"))
    userid = args.get("userid")
    if userid is not None and int(userid) != os.getuid():
        raise ValueError(
            "only the instance owner can delegate jobs"
            f" (job owner {userid}, instance owner {os.getuid()})"
        )
    job = runtime.jobs.get(int(args["id"]))
    if job is None:
        job = DelegatedJob(args, target)
        # State first: the calls below can run callbacks for this job.
        runtime.jobs[job.id] = job
        jobtap.job_attach(job.id, job)
        jobtap.subscribe(job.id)
    jobtap.dependency_add(job.id, DEPENDENCY)
    # At submit the job is NEW and its other dependencies are not all
    # recorded yet: job.state.depend starts the check.  A job already in
    # DEPEND (plugin load, restart) is checked now.
    if args.get("state") == flux.constants.FLUX_JOB_STATE_DEPEND:
        job.check_ready()
    return None


JOB_CALLBACKS = {
    "job.state.depend": DelegatedJob.on_depend,
    "job.event.dependency-remove": DelegatedJob.on_dependency_removed,
    "job.state.sched": DelegatedJob.on_sched,
    "job.state.cleanup": DelegatedJob.on_cleanup,
    "job.state.inactive": DelegatedJob.on_inactive,
}


def callback(topic, args, job):
    """Every jobtap callback delegate.so passes on arrives here."""
    if topic == "job.dependency.delegate":
        return on_dependency(args)
    if job is not None:
        method = JOB_CALLBACKS.get(topic)
        return method(job, args) if method else None
    if topic == "plugin.query":
        return runtime.query()
    return None


def plugin_load(conf):
    global jobtap, runtime
    import delegate_jobtap

    jobtap = delegate_jobtap
    runtime = Runtime(conf)


def plugin_unload():
    if runtime is not None:
        runtime.unload()
