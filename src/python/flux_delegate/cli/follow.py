"""'flux remote attach' (and 'flux remote submit --watch'): a delegated
job's output, streamed from its target while it runs, then its exit code,
as 'flux job attach' would show them had the job run here.

The local job's eventlog says where the job is (the "delegated" event:
the target's URI and the remote job id); the remote job's own eventlogs
say the rest (output, exceptions, the wait status).  A job not delegated
yet is waited for; a job failed over to another target is followed there;
a job whose target cannot be reached is followed here, to its end (its
status mirrors the remote's, but not its output).

The subcommand itself is attach_job (its parsed arguments); follow_jobs
follows one or several jobs, as attach and submit --watch do, and gives
the highest exit code.
"""

import errno
import json
import os
import signal
import sys
import threading

import flux
from flux.job import JobID, event_watch_async
from flux.job.output import output_watch_async

from ..eventlog import describe_origin
from ..jobspec import origin_of, same_origin
from .check import delegate_value
from .command import LOGGER
from .delegated import GONE, Delegation, describe_failover


class AttachError(Exception):
    """The job cannot be attached to (exit 1 with this message)."""


def why(exc):
    """An error's text, without Python's decoration."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def connect(uri, timeout):
    """flux.Flux(uri), given up after timeout seconds (a hung handshake, an
    ssh login that never completes).  Raises OSError."""
    result = {}

    def run():
        try:
            result["handle"] = flux.Flux(uri)
        except Exception as exc:  # pylint: disable=broad-except
            result["error"] = exc

    thread = threading.Thread(target=run, name=f"connect {uri}", daemon=True)
    thread.start()
    thread.join(timeout)
    if "handle" in result:
        return result["handle"]
    if "error" in result:
        raise OSError(
            getattr(result["error"], "errno", None) or errno.EHOSTUNREACH, why(result["error"])
        )
    raise OSError(errno.ETIMEDOUT, f"could not connect within {timeout:g}s")


def lookup(handle, jobid, keys):
    """job-info.lookup of keys ({key: text}); OSError as flux job attach
    words it."""
    try:
        return handle.rpc("job-info.lookup", {"id": int(jobid), "keys": keys, "flags": 0}).get()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise OSError(exc.errno, f"{JobID(jobid).f58}: no such job") from None
        if exc.errno == errno.EPERM:
            raise OSError(exc.errno, f"{JobID(jobid).f58}: that is not your job") from None
        raise


def exit_code(status):
    """(exit code, message) for a wait status, as flux job attach reports
    it (flux_job_waitstatus_to_exitcode): 128+N for a job shell killed by
    signal N; the message is None for 0."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, f"job shell {signal.strsignal(sig) or sig}"
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code > 128:
            return code, f"task(s) {signal.strsignal(code - 128) or code - 128}"
        if code > 0:
            return code, f"task(s) exited with exit code {code}"
        return 0, None
    return 1, f"unexpected wait(2) status {status}"


class Sink:
    """Where the output of followed jobs goes: one lock for all of them
    (several jobs may be followed at once, one thread each)."""

    def __init__(self, out, err, prog="flux-remote", several=False):
        self.out = out
        self.err = err
        self.prog = prog
        self.several = several  # several jobs: name the job in each line of ours
        self.lock = threading.Lock()

    def write(self, stream, data):
        target = self.err if stream != "stdout" else self.out
        with self.lock:
            target.write(data)
            target.flush()

    def say(self, text):
        """A line of the command's own on stderr."""
        with self.lock:
            self.out.flush()
            self.err.write(f"{self.prog}: {text}\n")
            self.err.flush()


class Outcome:
    """How following one remote job ended.

    code: its exit code (None if it never finished); exception: it had a
    fatal exception (the plugin fails the job over, or fails it); lost:
    the remote job could not be followed to its end (the local job's end
    tells the rest).
    """

    def __init__(self, code=None, exception=False, lost=False):
        self.code = code
        self.exception = exception
        self.lost = lost


class Follower:
    """Follow one local job to its end, wherever it runs."""

    def __init__(self, jobid, sink, timeout=5.0, handle=None, quiet=False):
        self.jobid = JobID(jobid)
        self.name = self.jobid.f58
        self.sink = sink
        self.timeout = timeout
        self.handle = handle
        self.quiet = quiet  # no word on waiting for the delegation
        self.announce = False  # say where the job runs once delegated

    def run(self):
        """The exit code; raises AttachError (or OSError) when the job is not
        one to attach to."""
        if self.handle is None:
            self.handle = flux.Flux()
        found = lookup(self.handle, self.jobid, ["eventlog", "jobspec"])
        record = Delegation.from_text(found.get("eventlog"))
        try:
            jobspec = json.loads(found.get("jobspec") or "{}")
        except ValueError:
            jobspec = {}
        if not record.taken and not delegate_value(jobspec)[0]:
            raise AttachError(
                f"{self.name} is not a delegated job (no delegate dependency):"
                f" use flux job attach {self.name}"
            )
        if record.current is None and record.exception is None and not record.ended:
            if not self.quiet:
                self.sink.say(f"{self.name} is not delegated yet: waiting for it to be")
                self.announce = True
        return self.follow()

    def follow(self):
        """Read the local eventlog from its start, following each remote job
        as its "delegated" event comes."""
        record = Delegation()
        lost = False
        pending = None  # exit code of a remote job that failed: final unless a failover follows
        watch = event_watch_async(self.handle, self.jobid)
        while True:
            event = watch.get_event()
            if event is None:
                break
            name, context = event.name, event.context
            record.update(name, context, event.timestamp)
            if name == "delegated" and record.current is not None:
                outcome = self.follow_remote(record)
                if outcome.lost:
                    lost = True
                elif outcome.exception:
                    pending = outcome.code
                else:
                    return outcome.code
            elif name == "delegate-failover":
                self.sink.say(f"{self.name}: {describe_failover(context)}")
                pending, lost = None, False
                self.announce = True
            elif name == "exception" and context.get("severity", 0) == 0:
                watch.cancel()
                if pending is not None:
                    return pending  # the remote exception was shown
                self.sink.say(f"{self.name}: {context.get('type')}: {context.get('note') or ''}")
                return 1
            elif name == "finish" and lost:
                code, text = exit_code(context.get("status", 0))
                if text:
                    self.sink.say(f"{self.name}: {text}" if self.sink.several else text)
                return code
        if pending is not None:
            return pending
        if record.status is not None:
            return exit_code(record.status)[0]
        return 1

    # -- the remote job ----------------------------------------------------------

    def follow_remote(self, record):
        """Stream the output of the remote job in force until it ends."""
        context = record.current
        uri = context["uri"]
        rid = JobID(int(context["jobid"]))
        where = f"{context['label']} ({uri})" if context.get("label") else uri
        wait_here = f"following {self.name} here to its end (its output is not shown)"
        try:
            remote = connect(uri, self.timeout)
        except OSError as exc:
            self.sink.say(f"cannot connect to {uri}: {why(exc)}: {wait_here}")
            return Outcome(lost=True)
        try:
            found = lookup(remote, rid, ["jobspec"])
            theirs = origin_of(json.loads(found["jobspec"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                text = f"remote job {rid.f58} is not on {uri} any more ({GONE})"
            else:
                text = f"remote job {rid.f58} on {uri}: {why(exc)}"
            self.sink.say(f"{text}: {wait_here}")
            return Outcome(lost=True)
        if not same_origin(theirs, record.origin(self.jobid)):
            whose = describe_origin(theirs) if theirs else "no job of ours"
            self.sink.say(
                f"job {rid.f58} on {uri} was made for {whose}, not {self.name}"
                f" (a different instance at that URI now?): {wait_here}"
            )
            return Outcome(lost=True)
        if self.announce:
            self.sink.say(f"{self.name} runs on {where} as {rid.f58}")
        prefix = f"{self.name}: " if self.sink.several else ""
        return RemoteStream(remote, rid, self.sink, prefix).run(wait_here)


class RemoteStream:
    """The output and main eventlog of one remote job, on its own handle."""

    def __init__(self, handle, rid, sink, prefix=""):
        self.handle = handle
        self.rid = rid
        self.sink = sink
        self.prefix = prefix
        self.status = None
        self.exception = None
        self.error = None
        self.ended = False

    def on_output(self, future):
        try:
            stream, data = future.get_output()
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: it never started (its exception was shown)
                self.error = self.error or exc
            return
        if stream is not None and data:
            self.sink.write(stream, data)

    def on_event(self, future):
        try:
            event = future.get_event()
        except OSError as exc:
            self.error = self.error or exc
            return
        if event is None:
            self.ended = True
            return
        if event.name == "exception" and event.context.get("severity", 0) == 0:
            self.exception = self.exception or event.context
        elif event.name == "finish":
            self.status = event.context.get("status")

    def run(self, wait_here):
        try:
            output_watch_async(self.handle, self.rid).then(self.on_output)
            event_watch_async(self.handle, self.rid).then(self.on_event)
            self.handle.reactor_run()
        except OSError as exc:  # the connection broke
            self.error = self.error or exc
        if self.status is None and self.exception is None:
            text = why(self.error) if self.error else "its eventlog ended without an exit status"
            self.sink.say(f"lost contact with remote job {self.rid.f58}: {text}: {wait_here}")
            return Outcome(lost=True)
        code = None
        if self.status is not None:
            code, text = exit_code(self.status)
            if text:
                self.sink.say(self.prefix + text)
        if self.exception is not None:
            return Outcome(code=code or 1, exception=True)
        return Outcome(code=code)


# -- flux remote attach (and flux remote submit --watch) -----------------------


def follow_jobs(jobids, timeout, quiet=False):
    """Follow jobs to their end (one thread each if several), their output
    on stdout and stderr; the highest exit code.  quiet: no word on
    waiting for a job to be delegated (it was just submitted)."""
    sink = Sink(sys.stdout, sys.stderr, several=len(jobids) > 1)

    def follow(jobid):
        try:
            return Follower(jobid, sink, timeout=timeout, quiet=quiet).run()
        except (AttachError, OSError) as exc:
            LOGGER.error("%s", why(exc))
            return 1

    codes = [1] * len(jobids)

    def run(i, jobid):
        codes[i] = follow(jobid)

    try:
        if len(jobids) == 1:
            return follow(jobids[0])
        threads = [
            threading.Thread(target=run, args=(i, j), daemon=True) for i, j in enumerate(jobids)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        # Detach: the jobs go on, here and there.
        names = [JobID(j).f58 for j in jobids]
        if len(names) == 1:
            sink.say(f"detached: the job goes on ('flux remote attach {names[0]}' follows it again)")
        else:
            sink.say(f"detached: the jobs go on ({' '.join(names)})")
        return 128 + signal.SIGINT
    return max(codes)


def attach_job(args):
    sys.exit(follow_jobs([args.jobid], args.timeout))
