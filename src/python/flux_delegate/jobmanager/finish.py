"""The released job's run: started, given the remote job's output, and
finished with the remote job's wait status, by the plugin.

The output was read from the target while the job was still pending, and
written to the job's KVS directory then (job.ID.delegate-output, OUTPUT_KEY:
the heavy write is done before the job runs, and it stays there for a
plugin loaded again to find).  A released job runs in job-exec's test exec
mode with override (jobspec.release_updates): job-exec creates its guest
namespace (job-ID, linked at job.ID.guest) and waits.  Then, each step
answered before the next:

  1. job-exec.override "start": the job starts (the "start" event; from
     now on a restart finishes it at once with the remote wait status,
     reattach_finish).  Until job-exec has taken the job on, it answers
     ENOENT: asked again, soon.
  2. the output, copied (a KVS copy: one directory entry, whatever its
     size) to "output" in the guest namespace (guest.output), where the
     job shell would have written it; job-exec moves the namespace into
     the job's KVS directory when the job ends, and 'flux job attach'
     reads it there.
  3. job-exec.override "finish" with the remote wait status.

Every request is the job-manager's own, asynchronous; the namespace is the
job owner's, who is the instance owner (the plugin delegates no one
else's jobs), as job-exec.override requires.

A plugin loaded again while a released job runs (reload, restart: the job
has RELEASE_ATTRIBUTE) does the same ("resumed"): a start already made is
answered EINVAL, a finish already made too (the job is no longer
running); the output is copied only if it is not in the guest namespace
yet, and if there is none to copy, a notice says so.
"""

import errno
import syslog

import flux.kvs
from flux.core.inner import ffi, lib
from flux.future import Future
from flux.job import JobID

from ..names import OUTPUT_KEY
from ..outputlog import OutputCopy, missing_notice
from .phases import RELEASING
from .reactor import guard, log, then

#: Seconds between asks while job-exec has not taken the job on yet, the
#: last one repeated.  It takes a few milliseconds (it makes the job's
#: guest namespace first): asked every 2 ms five times, then less often (a
#: burst of releases must not flood it with asks).
START_RETRIES = (0.002,) * 5 + (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Finish:
    """stored: whether the output was written to OUTPUT_KEY (None: not
    known, resumed by another load)."""

    def __init__(self, job, wait_status, stored, resumed=False):
        self.job = job
        self.runtime = job.runtime
        self.wait_status = int(wait_status)
        self.stored = stored
        self.resumed = resumed
        self.tries = 0
        self.namespace = f"job-{job.id}"

    def wanted(self):
        return self.job.phase == RELEASING and self.job.finishing is self

    def start(self):
        self.send("start", self.on_started)
        return self

    def send(self, event, callback):
        payload = {"event": event, "jobid": self.job.id}
        if event == "finish":
            payload["status"] = self.wait_status
        future = self.runtime.handle.rpc("job-exec.override", payload)
        then(future, callback, job=self.job)

    def on_started(self, future):
        if not self.wanted():
            return
        try:
            future.get()
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOSYS):
                # job-exec has not taken the job on yet (or, resumed after
                # a restart, has finished it already: then the job ends,
                # and asking stops with it).
                delay = START_RETRIES[min(self.tries, len(START_RETRIES) - 1)]
                self.tries += 1
                self.job.timers.start(
                    "finish", delay, guard(lambda: self.wanted() and self.start(), self.job)
                )
                return
            if exc.errno != errno.EINVAL:  # EINVAL: started already
                self.job.fail(f"cannot start the released job: {exc.strerror or exc}")
                return
        if self.resumed:
            self.look_for_output()
        elif self.stored:
            self.copy_output()
        else:
            self.send("finish", self.on_finished)

    def look_for_output(self):
        """Resumed: is the output in the guest namespace already?"""
        future = Future(
            flux.kvs.RAW.flux_kvs_lookup(self.runtime.handle, self.namespace, 0, "output")
        )
        then(future, self.on_output_looked_up, job=self.job)

    def on_output_looked_up(self, future):
        if not self.wanted():
            return
        try:
            future.get()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log(syslog.LOG_INFO, f"{self.job.name}: output: {exc.strerror or exc}")
            self.copy_output()
            return
        self.send("finish", self.on_finished)

    def copy_output(self):
        """A KVS copy: the output's tree object (one directory entry,
        whatever its size) put into the guest namespace.  Looked up while
        the job waited (DelegatedJob.look_up_output_treeobj), that is one
        commit; else flux_kvs_copy() looks it up first."""
        treeobj = None if self.resumed else self.job.output_treeobj
        if treeobj is not None:
            txn = ffi.gc(lib.flux_kvs_txn_create(), lib.flux_kvs_txn_destroy)
            commit = ffi.NULL
            if lib.flux_kvs_txn_put_treeobj(txn, 0, b"output", treeobj.encode()) == 0:
                commit = lib.flux_kvs_commit(
                    self.runtime.handle.handle, self.namespace.encode(), 0, txn
                )
            if commit != ffi.NULL:
                then(Future(commit), self.on_copied, job=self.job)
                return
        source = f"{JobID(self.job.id).kvs}.{OUTPUT_KEY}"
        future = Future(
            flux.kvs.RAW.flux_kvs_copy(
                self.runtime.handle, ffi.NULL, source, self.namespace, "output", 0
            )
        )
        then(future, self.on_copied, job=self.job)

    def on_copied(self, future):
        if not self.wanted():
            return
        try:
            future.get()
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.resumed:
                # Released by a load that had no output to store, or ended
                # before it could: say that it is elsewhere.
                self.write_notice()
                return
            # The job ends right all the same, without its output.
            log(
                syslog.LOG_ERR,
                f"{self.job.name}: cannot copy the remote job's output into the job:"
                f" {exc.strerror or exc}",
            )
        self.send("finish", self.on_finished)

    def write_notice(self):
        notice = missing_notice(
            "is not here (none was copied, or the plugin was reloaded before it was)",
            self.job.name,
        )
        txn = flux.kvs.KVSTxn(self.runtime.handle, namespace=self.namespace)
        txn.put("output", OutputCopy(0).text(notice), raw=True)  # a header, the notice
        then(txn.commit_async(), self.on_notice_written, job=self.job)

    def on_notice_written(self, future):
        if not self.wanted():
            return
        try:
            future.get()
        except OSError as exc:
            log(syslog.LOG_INFO, f"{self.job.name}: output notice: {exc.strerror or exc}")
        self.send("finish", self.on_finished)

    def on_finished(self, future):
        try:
            future.get()
        except OSError as exc:
            # EINVAL: no longer running (finished already: a restart's
            # reattach, a resumed finish); ENOENT: ended and gone.
            if exc.errno not in (errno.EINVAL, errno.ENOENT) and self.wanted():
                self.job.fail(f"cannot finish the released job: {exc.strerror or exc}")
