"""What a released job takes from its remote job before it runs through to
its end: the remote job's output (its RFC 24 "guest.output" eventlog,
within output-limit) and its R (where it ran), read from the target over
the job's connection, asynchronously, each within submit-timeout.

Neither is needed for the job to end right: a failure to read either is
noted (the output says so; the local R names this host instead) and the
release goes on.
"""

import errno
import json
import os
import syslog

import flux.constants
import flux.job
import flux.kvs
from flux.core.inner import ffi, lib
from flux.future import Future
from flux.job import JobID

from ..jobspec import R_naming, flux_counts
from ..outputlog import OutputCopy, capped_notice, missing_notice, size_text
from .reactor import Timer, guard, log
from .outgoing import answer_of


class RemoteOutput:
    """The remote job's output eventlog, read entry by entry into an
    OutputCopy that holds at most limit bytes.  on_done(text) once: the
    output eventlog to write into the local job (None: nothing to write).

    Read once the remote job has finished.  The flux shell has written
    all of it then (it commits its output before it exits), into the
    job's guest namespace, which the target keeps a few milliseconds more
    before it moves it into the job's KVS directory: it is read there
    first, as it is, streamed one stored piece at a time (a KVS lookup
    with FLUX_KVS_STREAM).  Once the namespace is gone (ENOTSUP: the
    target was quicker, under load, or the output is taken later, after a
    reconnect), the same way from where the target moved it, the job's
    KVS directory (job.ID.guest.output), which the target's instance owner
    may read.  Where that cannot be read either (a guest of a multi-user
    target, EPERM), or the namespace holds no output (ENOENT), it is read
    through job-info (eventlog-watch of guest.output, which waits for the
    namespace to be moved before it ends).  'moved': the remote job has
    cleaned up, its namespace is gone: read from its KVS directory at once
    (flux-core 0.88's KVS was seen to leave a lookup in a namespace being
    removed, and a job-info watch made in that moment, unanswered).

    Once the limit is reached the copy is done; the watch is canceled and
    what the target still sends (job-info sends a finished job's whole
    eventlog at once, a cancel or not; the stream, its last pieces) is
    read and let go, one answer at a time, never kept."""

    def __init__(self, job, remote, remote_id, limit, on_done, moved=False, make_copy=None):
        self.job = job
        # Whether the remote job has cleaned up (its namespace moved into
        # its KVS directory): read there at once.
        self.moved = moved
        self.runtime = job.runtime
        self.remote = remote
        self.remote_id = remote_id
        self.limit = limit
        self.on_done = on_done
        # What keeps the output read: its beginning (OutputCopy), or its
        # beginning and its tail (outputlog.TailedCopy, for live output).
        self.make_copy = make_copy or (lambda: OutputCopy(limit))
        self.copy = self.make_copy()
        self.partial = b""  # a streamed piece's last line, if it was cut
        self.read_from = None  # the count of the plugin's query it adds to
        self.outgoing = None
        self.timer = None
        self.done = False

    @property
    def local_id(self):
        return JobID(self.job.id).f58

    def start(self):
        if self.limit == 0:
            notice = missing_notice("was not copied (plugin option output-limit=0)", self.local_id)
            self.finish(self.copy.text(notice))
            return self
        if self.moved:
            self.stream(None, f"{self.remote_id.kvs}.guest.output", "output-from-job-directory")
        else:
            self.stream(f"job-{int(self.remote_id)}", "output", "output-from-namespace")
        return self

    def stream(self, namespace, key, read_from):
        """Read key of namespace (None: the primary one) piece by piece."""
        self.read_from = read_from
        self.outgoing = self.remote.request(
            1024,
            lambda h: Future(
                flux.kvs.RAW.flux_kvs_lookup(
                    h, namespace or ffi.NULL, flux.constants.FLUX_KVS_STREAM, key
                )
            ),
            self.on_piece,
            job=self.job,
        )
        self.arm()

    def watch(self):
        """The guest namespace is gone: read through job-info."""
        self.read_from = "output-watched"
        self.outgoing = self.remote.request(
            1024,
            lambda h: flux.job.event_watch_async(h, self.remote_id, "guest.output"),
            self.on_answer,
            job=self.job,
        )
        self.arm()

    def on_piece(self, future):
        """One stored piece of the output eventlog (whole entries, as the
        shell appended them), or the end (ENODATA)."""
        if self.done:
            self.discard(future)
            return
        try:
            piece = answer_of(lambda: raw_value(future))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                self.take_line(self.partial)
                if not self.done:
                    self.finish(self.copy.text())
            else:
                self.copy = self.make_copy()
                self.partial = b""
                if exc.errno == errno.ENOTSUP and self.read_from == "output-from-namespace":
                    # The namespace is gone: moved into the job's directory.
                    key = f"{self.remote_id.kvs}.guest.output"
                    self.stream(None, key, "output-from-job-directory")
                elif exc.errno == errno.ENOENT and self.moved:
                    # Cleaned up, and no output in its directory: the job
                    # ran no shell (test exec), and printed nothing.
                    self.finish(self.copy.text())
                else:
                    # ENOENT: no output; EPERM: not ours to read; or
                    # whatever else: job-info says what there is.
                    self.watch()
            return
        future.reset()
        # Line by line, only as far as the copy takes them: past the cap the
        # rest of a piece (a shell's append may be megabytes) is not looked at.
        data = self.partial + piece if self.partial else piece
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            if not self.take_line(data[start:end]):
                return
            start = end + 1
            end = data.find(b"\n", start)
        self.partial = data[start:]
        if len(self.partial) > self.limit:  # an entry larger than all that is kept
            self.capped()
            return
        self.arm()

    def take_line(self, line):
        """One line of the eventlog into the copy; False once the copy is
        done (capped)."""
        if not line.strip():
            return True
        try:
            event = json.loads(line)
            name, timestamp, context = event["name"], event["timestamp"], event.get("context")
        except (ValueError, TypeError, KeyError, RecursionError):
            self.copy.malformed += 1  # not an eventlog entry: the next may be
            return True
        if self.copy.add(name, timestamp, context):
            return True
        self.capped()
        return False

    def arm(self):
        """Each answer must come within submit-timeout of the one before."""
        self.stop_timer()
        if not self.done:
            self.timer = Timer(
                self.runtime.submit_timeout,
                guard(self.unanswered, self.job, self.runtime),
                self.runtime,
            )

    def stop_timer(self):
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def unanswered(self):
        self.timer = None
        if self.done:
            return
        self.stop_watch()
        self.finish(self.notice(f"did not come within {self.runtime.submit_timeout:g}s"))

    def on_answer(self, future):
        if self.done:
            self.discard(future)
            return
        try:
            event = future.get_event()
        except OSError as exc:
            future.needs_cancel = False  # the watch is over
            if exc.errno == errno.ENOENT:
                # No output eventlog: the job printed nothing, or ran no
                # shell.  Nothing to tell but what there is.
                self.finish(self.copy.text())
            else:
                self.finish(self.notice(f"could not be read: {exc.strerror or exc}"))
            return
        except Exception:  # pylint: disable=broad-except
            # Not an eventlog entry (a target may send anything): the next
            # one may be.
            future.reset()
            self.copy.malformed += 1
            self.arm()
            return
        if event is None:  # the end of the eventlog
            self.finish(self.copy.text())
            return
        if self.copy.add(event.get("name"), event.get("timestamp"), event.get("context")):
            self.arm()
            return
        self.capped(future)

    def capped(self, future=None):
        """The copy is full: the rest is let go."""
        log(
            syslog.LOG_INFO,
            f"{self.job.name}: output of {self.remote_id.f58} capped at"
            f" {size_text(self.limit)} (output-limit)",
        )
        self.stop_watch(future)
        self.finish(self.copy.text(capped_notice(self.limit, self.local_id)))

    def notice(self, what):
        """The output so far, with a notice saying the rest is missing."""
        if self.copy.entries or self.copy.header:
            what = what + " after its first entries (the rest is not here)"
        return self.copy.text(missing_notice(what, self.local_id))

    def discard(self, future):
        """An answer after the copy is done: let go unread (not even
        parsed), so that the future is ready for the next and holds none,
        until the end (an error answer: ENODATA, or the watch's error)."""
        if lib.flux_future_get(future.pimpl.handle, ffi.NULL) < 0:
            future.needs_cancel = False  # over: nothing more comes
            return
        future.reset()

    def stop_watch(self, future=None):
        """Ask the target to end the watch, if that can be sent now without
        blocking; either way its answers are let go until it ends."""
        future = future or (self.outgoing.future if self.outgoing else None)
        if future is None:
            if self.outgoing is not None:
                self.outgoing.withdraw()
            return
        if (
            getattr(future, "needs_cancel", False)
            and not self.remote.lost
            and self.remote.fits(1024)
        ):
            try:
                future.cancel(stop=False)
            except OSError:
                pass

    def finish(self, text):
        if self.done:
            return
        self.done = True
        self.stop_timer()
        if self.read_from is not None:
            self.runtime.counts[self.read_from] += 1
        self.copy.clear()  # text holds it now
        if self.copy.malformed:
            log(
                syslog.LOG_INFO,
                f"{self.job.name}: {self.copy.malformed} entries of the output of"
                f" {self.remote_id.f58} are not output entries: not copied",
            )
        self.on_done(text)


def raw_value(future):
    """The value a KVS lookup answered, as bytes."""
    data = ffi.new("void *[1]")
    size = ffi.new("size_t [1]")
    if lib.flux_kvs_lookup_get_raw(future.pimpl.handle, data, size) < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    return bytes(ffi.buffer(data[0], size[0])) if size[0] else b""


class RemoteR:
    """The remote job's R (job-info lookup), made into the local job's
    (jobspec.R_naming): on_done(R), or on_done(None) if it cannot be had
    within submit-timeout or is not of a shape to take."""

    def __init__(self, job, remote, remote_id, on_done, known=None):
        self.job = job
        self.runtime = job.runtime
        self.remote = remote
        self.remote_id = remote_id
        self.on_done = on_done
        self.known = known  # R as the target's journal gave it, if it did
        self.done = False
        self.timer = None

    def start(self):
        if self.known is not None:
            self.take(self.known)
            return self
        self.timer = Timer(
            self.runtime.submit_timeout,
            guard(lambda: self.finish(None, "no answer in time"), self.job, self.runtime),
            self.runtime,
        )
        self.remote.request(
            1024,
            lambda h: flux.job.kvslookup.job_info_lookup(h, self.remote_id, keys=["R"]),
            self.on_answer,
            job=self.job,
        )
        return self

    def on_answer(self, future):
        if self.done:
            return
        try:
            R = answer_of(lambda: future.get_decode()["R"])
        except (OSError, KeyError, TypeError) as exc:
            self.finish(None, getattr(exc, "strerror", None) or str(exc))
            return
        self.take(R)

    def take(self, R):
        limit = self.runtime.max_named_nodes
        local = R_naming(R, count=flux_counts, max_nodes=limit)
        if local is None and R_naming(R, count=flux_counts) is not None:
            why = f"more than {limit} node (a per-rank job prolog or epilog runs here)"
        else:
            why = "not an R naming its nodes"
        self.finish(local, None if local is not None else why)

    def finish(self, R, why):
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if R is None:
            log(
                syslog.LOG_INFO,
                f"{self.job.name}: R of {self.remote_id.f58}: {why}; the local R"
                " names this host",
            )
        self.on_done(R)


class Collect:
    """Both at once: on_done(R, output) when both are in.  known_R: the
    remote R if it is known already (the journal's alloc event brings it)."""

    def __init__(self, job, remote, remote_id, limit, on_done, known_R=None):
        self.on_done = on_done
        self.results = {}
        self.parts = [
            RemoteR(job, remote, remote_id, lambda R: self.got("R", R), known=known_R),
            RemoteOutput(job, remote, remote_id, limit, lambda text: self.got("output", text)),
        ]

    def start(self):
        for part in self.parts:
            part.start()
        return self

    def got(self, what, value):
        self.results[what] = value
        if len(self.results) == len(self.parts):
            self.on_done(self.results["R"], self.results["output"])

    def cancel(self):
        """The job ended meanwhile: nothing more is wanted."""
        for part in self.parts:
            if not part.done:
                part.done = True
                if part.timer is not None:
                    part.timer.cancel()
                    part.timer = None
                if isinstance(part, RemoteOutput):
                    part.stop_watch()
