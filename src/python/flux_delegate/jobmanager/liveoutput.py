"""Live output: a running job's output copied as its remote job writes it,
for 'flux job attach LOCALID' to stream.

For a job it runs, job-exec makes a guest namespace, job-ID, where the
job's shell writes its exec eventlog and output; job-info reads them
there once the job's "start" event is posted, and from the job's KVS
directory once the namespace has been copied there (its "release",
final).  No job-exec runs a delegated job here: this does the same for it
(RFC 16's layout), with the remote job's output:

  begin  (the job runs here, starting.py) the namespace job-ID is made,
         owned by the job's owner, with an exec eventlog (init, starting,
         shell.init); the job's guest key is linked to it (as job-exec
         does: 'flux kvs get' finds it there) and "start" is posted;
  copy   the remote job's guest.output is watched (job-info's
         eventlog-watch, over the job's connection; WATCH_DELAY after
         the start, so that a job of milliseconds is not) and each entry appended
         to the namespace's output as it comes: one commit at a time, what
         comes meanwhile in the next; within output-limit, then only the
         last output-tail bytes are kept, for the end (outputlog.LiveCopy);
  end    (the remote job ended: Releasing) once the watch has ended (or,
         END_GRACE after the remote end, the output read again whole from
         the remote job's KVS directory; at once, without a watch, for a
         remote job that cleaned up before it was watched): the tail, and the exec
         eventlog's complete and done, are written; the namespace is
         copied into the job's KVS directory and removed; then the job
         finishes (LocalRun).  A job that ends otherwise (an exception, a
         cancel) has its namespace moved the same way (close()).

A namespace that cannot be made leaves the job without live output: its
output is copied at the end as before (Releasing.collect).  After a
reload or restart the namespace is made again (a restart loses it, a
reload finds it) and the output copied again from its beginning, in
place of what was there: nothing twice.  stdin: the shell.init names no
service of the remote job's; 'flux job attach' says "stdin not accepted
by job" if given any ('flux remote attach' forwards it).
"""

import errno
import json
import syslog
import time

import flux.constants
import flux.kvs
from flux.core.inner import ffi, lib
from flux.future import Future
from flux.job import JobID

from ..outputlog import LiveCopy, TailedCopy, header_text
from .output import RemoteOutput
from .reactor import guard, log, then
from .watch import EventlogWatch

#: Seconds after the remote job's end within which the watch of its output
#: should have ended (job-info ends it as the remote guest namespace is
#: moved, before the remote clean): past that (or submit-timeout, if
#: shorter), it is read again from the remote job's KVS directory
#: (give_up).  flux-core 0.88's job-info was seen never to answer a watch
#: that reached it as the namespace was being removed (a job that ran for
#: milliseconds), not even with the header.
END_GRACE = 2.0

#: Seconds after the local start before the remote output is watched: a
#: job that ends sooner (a 'true') is not watched at all, its output read
#: once from the remote job's directory at its end (read_again), which
#: costs the target less than a job-info watch and its kvs-watch.  A watch
#: replays the output from its beginning: the first lines come this much
#: later, none is lost.
WATCH_DELAY = 0.1

#: The stdin service shell.init names (attach sends stdin to SERVICE.stdin):
#: none answers it here.
NO_STDIN_SERVICE = "delegate-nostdin"


def exec_entry(name, context=None, now=None):
    """One line of the exec eventlog."""
    entry = {"timestamp": time.time() if now is None else now, "name": name}
    if context is not None:
        entry["context"] = context
    return json.dumps(entry, separators=(",", ":")) + "\n"


def look_for_moved_guest(job, on_moved):
    """on_moved(whether the job's guest key is a directory: its guest
    namespace was moved there, no longer linked)."""
    key = f"{JobID(job.id).kvs}.guest"
    flags = flux.constants.FLUX_KVS_TREEOBJ
    lookup = Future(flux.kvs.RAW.flux_kvs_lookup(job.runtime.handle, None, flags, key))

    def looked_up(future):
        value = ffi.new("char *[1]")
        treeobj = None  # ENOENT: never linked
        if lib.flux_kvs_lookup_get(future.pimpl.handle, value) == 0 and value[0] != ffi.NULL:
            try:
                treeobj = json.loads(ffi.string(value[0]).decode("utf-8", "replace"))
            except ValueError:
                treeobj = None
        on_moved(isinstance(treeobj, dict) and treeobj.get("type") in ("dir", "dirref"))

    then(lookup, looked_up, job=job)


def append(txn, key, lines):
    data = ("\n".join(lines) + "\n").encode("utf-8") if isinstance(lines, list) else lines
    flux.kvs.RAW.flux_kvs_txn_put_raw(txn.txn, flux.constants.FLUX_KVS_APPEND, key, data, len(data))


def move_guest_namespace(job, namespace, tail, wait_status, on_moved):
    """The output's tail and the exec eventlog's end (complete, unless
    wait_status is None, and done) into the job's guest namespace; then the
    namespace copied into the job's KVS directory (as job-exec moves one),
    and removed; then on_moved().  A step that fails is logged, and the
    next taken: the job must end."""
    txn = flux.kvs.KVSTxn(job.runtime.handle, namespace=namespace)
    if tail:
        append(txn, "output", tail)
    ending = exec_entry("done")
    if wait_status is not None:
        ending = exec_entry("complete", {"status": wait_status}) + ending
    append(txn, "exec.eventlog", ending.encode("utf-8"))

    def step(future, what, next_step):
        try:
            future.get()
        except OSError as exc:
            log(syslog.LOG_ERR, f"{job.name}: {what}: {exc.strerror or exc}")
        next_step()

    def copy():
        key = f"{JobID(job.id).kvs}.guest"
        copying = Future(flux.kvs.RAW.flux_kvs_copy(job.runtime.handle, namespace, ".", None, key, 0))
        then(copying, lambda f: step(f, "its guest namespace not kept", remove), job=job)

    def remove():
        remove_namespace(job, namespace, on_moved)

    then(txn.commit_async(), lambda f: step(f, "the end of its exec eventlog", copy), job=job)


def remove_namespace(job, namespace, on_removed):
    removing = Future(flux.kvs.RAW.flux_kvs_namespace_remove(job.runtime.handle, namespace))

    def removed(future):
        try:
            future.get()
        except OSError as exc:
            log(syslog.LOG_DEBUG, f"{job.name}: {namespace}: {exc.strerror or exc}")
        on_removed()

    then(removing, removed, job=job)


def namespace_made(live, future, post_start):
    """LiveOutput.on_made: the namespace is made: its exec eventlog and
    output header written, the job's guest key linked to it."""
    job = live.job
    try:
        future.get()
    except OSError as exc:
        if exc.errno != errno.EEXIST:  # made before a reload: taken again
            live.fail(f"its guest namespace could not be made: {exc.strerror or exc}", made=False)
            return
    if live.state != "making":
        live.remove()  # the job ended meanwhile (close())
        return
    now = time.time()
    guest = flux.kvs.KVSTxn(live.runtime.handle, namespace=live.namespace)
    guest.put(
        "exec.eventlog",
        exec_entry("init", now=now)
        + exec_entry("starting", now=now)
        + exec_entry("shell.init", {"leader-rank": 0, "service": NO_STDIN_SERVICE}, now),
        raw=True,
    )
    # 'flux job attach' reads the output from shell.init on, and finds
    # it there, as a shell writes its header first: ours, one per job.
    guest.put("output", header_text(now) + "\n", raw=True)
    live.copy.header_given = True
    live.first = False
    link = flux.kvs.KVSTxn(live.runtime.handle)
    flux.kvs.RAW.flux_kvs_txn_symlink(
        link.txn, 0, f"{JobID(job.id).kvs}.guest", live.namespace, "."
    )
    waiting = {"count": 2, "error": None}

    def committed(f):
        try:
            f.get()
        except OSError as exc:
            waiting["error"] = exc
        waiting["count"] -= 1
        if waiting["count"]:
            return
        if waiting["error"] is not None:
            live.fail(f"its guest namespace could not be written: {waiting['error']}")
        elif live.state == "making":
            live.state = "live"
            if post_start is not None:
                post_start()
            live.follow()
            if live.on_end is not None:  # the remote job ended meanwhile
                live.end(live.wait_status, live.on_end)
        else:
            live.remove()

    then(guest.commit_async(), committed, job=job)
    then(link.commit_async(), committed, job=job)


class LiveOutput:
    """The live output of one running job (see the module's docstring)."""

    def __init__(self, job):
        self.job = job
        self.runtime = job.runtime
        self.namespace = f"job-{job.id}"
        self.copy = LiveCopy(job.runtime.output_limit, job.runtime.output_tail, job.name)
        self.state = "new"  # making, live, ending, moving, moved, failed
        self.pending = []  # lines to append to the output
        self.first = True  # the next write replaces the output (a put)
        self.writing = False
        self.complete = False  # the remote output has all come
        self.interrupted = None  # why the watch broke off, if it did
        self.watched = None  # the remote job whose output is copied
        self.received = False  # whether its watch has answered yet
        self.after_reread = None  # the state a read again goes back to
        self.watch = None
        self.wait_status = None
        self.on_end = None

    @property
    def live(self):
        """Whether the namespace is there to be written."""
        return self.state in ("live", "ending", "rereading")

    @property
    def taking(self):
        """Whether it takes the job's output (the output is not to be
        collected at the end: Releasing)."""
        return self.state not in ("new", "failed")

    def begin(self, post_start):
        """Make the namespace; post_start() once it is linked (not if the
        job's "start" was posted before a reload)."""
        job = self.job
        self.state = "making"
        future = Future(
            flux.kvs.RAW.flux_kvs_namespace_create(
                self.runtime.handle, self.namespace, int(job.userid), 0
            )
        )
        then(future, lambda f: self.on_made(f, post_start), job=job)

    def resume(self, post_start):
        """After a reload or restart: begin again, unless the namespace was
        moved into the job's KVS directory already (the output was all
        copied: only its end is left, and Releasing takes its output again
        then, the usual way)."""

        self.state = "resuming"  # taking: no output collected meanwhile

        def on_moved(moved):
            if moved:
                self.state = "new"
                self.job.live = None
            elif self.state == "resuming":
                self.begin(post_start)

        look_for_moved_guest(self.job, on_moved)

    def on_made(self, future, post_start):
        namespace_made(self, future, post_start)

    def follow(self):
        """Watch the remote job's output, the whole of it from its start,
        once it can be (Following.follow: connected, the remote id checked);
        again, in place of what was copied, after the watch broke off (a
        lost connection) or for another remote job (a requeue).  A remote
        job that has cleaned up already (it ran for milliseconds) is not
        watched: its output is read whole from its KVS directory."""
        job = self.job
        if self.state not in ("live", "ending") or self.watch is not None:
            return
        if job.remote is None or job.remote.lost:
            return
        if job.remote_id == self.watched and self.complete:
            return
        if self.watched is not None:
            self.copy = LiveCopy(self.runtime.output_limit, self.runtime.output_tail, job.name)
            self.pending, self.first, self.complete, self.interrupted = [], True, False, None
        self.watched = job.remote_id
        self.received = False
        if job.outcome.ended:
            self.read_again()
            return
        if "live-watch" not in job.timers:
            job.timers.start("live-watch", WATCH_DELAY, guard(self.start_watch, job))

    def start_watch(self):
        """WATCH_DELAY after follow(), if the job still wants it."""
        job = self.job
        if self.state not in ("live", "ending") or self.watch is not None or self.complete:
            return
        if job.remote is None or job.remote.lost:
            return
        if job.outcome.ended:
            self.read_again()
            return
        self.watch = EventlogWatch(
            job.remote, job.remote_id, self.on_entry, self.on_watch_end, job=job,
            eventlog="guest.output",
            flags=lib.FLUX_JOB_EVENT_WATCH_WAITCREATE,
        )
        self.watch.start()

    def on_entry(self, event):
        self.received = True
        if self.live:
            self.pending += self.copy.take(event.name, event.timestamp, event.context)
            self.write()

    def on_watch_end(self, error):
        """The end of the remote output (None; ENOENT: the job wrote
        none), or the watch broke off: copied again once the job is
        followed again (follow()), or, at the end, said in the output."""
        self.watch = None
        if error is None or error.errno == errno.ENOENT:
            self.complete = True
            self.runtime.counts["output-live"] += 1
        else:
            self.interrupted = error.strerror or str(error)
        self.write()

    def stop(self):
        """The plugin is unloaded: the watch goes; the namespace stays, for
        the next load."""
        self.job.timers.cancel("live-watch")
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None

    def write(self):
        """Append what is pending, one commit at a time."""
        if self.writing or not self.pending or not self.live:
            self.maybe_move()
            return
        lines, self.pending = self.pending, []
        data = ("\n".join(lines) + "\n").encode("utf-8")
        txn = flux.kvs.KVSTxn(self.runtime.handle, namespace=self.namespace)
        if self.first:
            flux.kvs.RAW.flux_kvs_txn_put_raw(txn.txn, 0, "output", data, len(data))
        else:
            append(txn, "output", data)
        self.first = False
        self.writing = True
        then(txn.commit_async(), self.on_written, job=self.job)

    def on_written(self, future):
        self.writing = False
        try:
            future.get()
        except OSError as exc:  # the namespace gone under it
            self.fail(f"its output could not be written: {exc.strerror or exc}")
            return
        self.write()

    def end(self, wait_status, on_end):
        """The remote job ended with wait_status: on_end() once the output
        is all here and moved into the job's KVS directory; at once if
        there is no namespace (then on_end(False))."""
        if self.state == "making":  # once it is made (on_made)
            self.wait_status, self.on_end = int(wait_status), on_end
            return
        if self.state == "resuming":  # ended before it began again: collected
            self.state = "new"
        if self.state == "rereading":  # moved once read (on_reread)
            self.wait_status, self.on_end = int(wait_status), on_end
            self.after_reread = "ending"
            return
        if not self.live:
            on_end(False)
            return
        self.wait_status = int(wait_status)
        self.on_end = on_end
        self.state = "ending"
        if not self.complete and not self.received:
            # A watch not answered by the remote end, not even with the
            # header the shell writes first, is the watch job-info may never
            # answer (END_GRACE): the output is all in the remote job's
            # directory now.
            self.stop()
            self.read_again()
            return
        if not self.complete:
            grace = min(END_GRACE, self.runtime.submit_timeout)
            self.job.timers.start("live-output", grace, guard(self.give_up, self.job))
        self.write()

    def give_up(self):
        """The remote output has not all come END_GRACE after the remote end
        (its job-info did not answer the watch, or it broke off): it is read
        again whole, in place of what was copied."""
        if self.state != "ending" or self.complete:
            return
        self.stop()
        why = self.interrupted or f"not all of it came within {END_GRACE:g}s of the end"
        log(syslog.LOG_INFO, f"{self.job.name}: output copied as it came is short ({why}): read again")
        self.read_again()

    def read_again(self):
        """The remote job has cleaned up: its output is read whole from its
        KVS directory, as a job without live output's is
        (output.RemoteOutput), its beginning and its tail kept as a live
        copy keeps them (outputlog.TailedCopy), and written in place of
        what was copied."""
        self.after_reread = self.state
        self.state = "rereading"
        self.runtime.counts["output-read-again"] += 1
        job = self.job
        limit, tail = self.runtime.output_limit, self.runtime.output_tail
        RemoteOutput(
            job, job.remote, job.remote_id, limit, self.on_reread, moved=True,
            make_copy=lambda: TailedCopy(limit, tail, job.name),
        ).start()

    def on_reread(self, text):
        if self.state != "rereading":
            return
        self.state = self.after_reread
        self.complete = True
        self.copy = LiveCopy(self.runtime.output_limit, self.runtime.output_tail, self.job.name)
        self.pending = [text.rstrip("\n")] if text else []
        self.first = True  # in place of what was there
        self.write()

    def maybe_move(self):
        if self.state == "ending" and self.complete and not self.writing and not self.pending:
            self.job.timers.cancel("live-output")
            self.move(self.wait_status)

    def move(self, wait_status):
        """The tail and the exec eventlog's end, then the namespace moved
        (move_guest_namespace)."""
        self.state = "moving"
        move_guest_namespace(self.job, self.namespace, self.copy.end(), wait_status, self.on_removed)

    def remove(self):
        remove_namespace(self.job, self.namespace, self.on_removed)

    def on_removed(self):
        if self.state != "failed":
            self.state = "moved"
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(True)

    def close(self):
        """The job ended otherwise (an exception, a cancel): stop copying,
        and move what was copied into its KVS directory."""
        self.job.timers.cancel("live-watch")
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        self.job.timers.cancel("live-output")
        if self.state == "making":
            self.state = "ending-early"  # on_made() removes it
        elif self.state == "resuming":
            self.state = "new"  # not begun (resume())
        elif self.live and not self.writing:
            self.move(None)
        elif self.live:
            self.complete = True
            self.state = "ending"  # moved once the write in flight is done
            self.wait_status = None

    def fail(self, why, made=True):
        """No live output for this job: its output is copied at its end."""
        log(syslog.LOG_INFO, f"{self.job.name}: no live output: {why}")
        was_live = self.live
        made = self.state == "making" and made
        self.state = "failed"
        self.job.timers.cancel("live-watch")
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        on_end, self.on_end = self.on_end, None
        if not was_live and not made:
            if on_end is not None:
                on_end(False)
            return

        def unlinked(future):
            # The job's guest key is where its output goes now (collect).
            self.remove()
            if on_end is not None:
                on_end(False)

        unlink = flux.kvs.KVSTxn(self.runtime.handle)
        unlink.unlink(f"{JobID(self.job.id).kvs}.guest")
        then(unlink.commit_async(), unlinked, job=self.job)
