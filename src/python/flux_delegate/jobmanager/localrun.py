"""The released job's run: its events posted by the plugin, job-exec never
involved.

The remote job has run; the local job only has to end the same way.  Its
output, an exec eventlog and R were written to its KVS directory while it
was pending (Releasing.on_collected: guest.output, guest.exec.eventlog,
R), where job-exec would have left them.  Then, as R is given
(alloc-bypass, job.state.sched), the plugin posts, in one pass of the
reactor:

  alloc          bypass: no resources were allocated here; posted from the
                 job.state.sched callback, so that it follows at once;
  prolog-start   description "delegate", posted from job.state.run as a
                 site's prolog is (perilog.so): while a prolog is active or
                 queued the job-manager sends job-exec no start request, so
                 nothing runs here and no guest namespace is made;
  start, finish  with the remote wait status: 'flux job status' and 'flux
                 jobs' give the remote exit code;
  release        final: what job-info looks for to read the job's guest
                 files from its KVS directory ('flux job attach');
  prolog-finish  the job-manager then frees the (bypassed) resources and
                 posts clean.

All of them land in the same eventlog commit: a restart finds the job
either still pending (followed again, released again) or ended.  Without
job-exec's guest namespace made and moved (about 15 ms of KVS work on each
side of the run), the local job ends a few milliseconds after it is
released.

start and finish are posted once the job's queued events are handled
(outside any callback of the job: the job-manager handles an event posted
from inside one after the event in hand), so that a prolog of the site's
(perilog.so) that starts with the alloc is seen, and waited for: start and
finish come once every other prolog has finished, as job-exec's start
request would.  Until then the job is RUN, its run held by our prolog: a
plugin loaded meanwhile (reload, restart) takes it up again from its
eventlog (resume).  A job that ends otherwise meanwhile (a prolog failed:
an exception) has our prolog closed, or it would never be clean.  (If the
plugin is removed and not loaded again while a site's prolog holds a job,
nothing closes our prolog: the job waits for the next load.)
"""

import json
import time

#: The description of the prolog the plugin holds the job's run with.
PROLOG = "delegate"


def exec_eventlog(wait_status, now=None):
    """The job's guest.exec.eventlog, as job-exec's test mode writes it for
    a job without shells: 'flux job attach' reads the output once it sees
    "complete"."""
    now = time.time() if now is None else now
    entries = (
        {"timestamp": now, "name": "init"},
        {"timestamp": now, "name": "starting"},
        {"timestamp": now, "name": "complete", "context": {"status": int(wait_status)}},
        {"timestamp": now, "name": "done"},
    )
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)


def open_prologs(eventlog):
    """From a job's eventlog: (whether our prolog is open, how many other
    prologs are), counting prolog-start and prolog-finish by description."""
    ours = False
    others = 0
    for entry in eventlog:
        name = entry.get("name")
        if name not in ("prolog-start", "prolog-finish"):
            continue
        context = entry.get("context") or {}
        starting = name == "prolog-start"
        if context.get("description") == PROLOG:
            ours = starting
        else:
            others = others + 1 if starting else max(0, others - 1)
    return ours, others


class LocalRun:
    """The run of one released job (see the module's docstring)."""

    def __init__(self, job, wait_status):
        self.job = job
        self.post = job.runtime.jobtap.post_event
        # None while its remote job runs (starting.py): end_with() gives it.
        self.wait_status = None if wait_status is None else int(wait_status)
        self.holding = False  # our prolog is open
        self.others = 0  # prologs of others open
        self.ended = False  # finish posted
        # "start" posted (live output: once the job's guest namespace is
        # made, liveoutput.py); wanted: to be, once the job runs (hold()).
        self.started = False
        self.start_wanted = False
        self.resuming = None  # prolog events seen while its eventlog is read

    def allocate(self):
        """R is given (job.state.sched, or a plugin loaded again with the
        job in SCHED): alloc."""
        self.post(self.job.id, "alloc", {"bypass": True})

    def hold(self):
        """job.state.run: our prolog, queued, keeps job-exec's start request
        from being sent.  The state is set before the post."""
        if not self.holding and not self.ended:
            self.holding = True
            self.post(self.job.id, "prolog-start", {"description": PROLOG})

    def go_on(self):
        """Once the job's queued events are handled (outside its callbacks:
        a site's prolog-start, posted with ours, is seen by then): the start
        wanted meanwhile, and the end, if it has come."""
        if self.start_wanted:
            self.post_start()
        self.finish_when_ready()

    def post_start(self):
        """The job's guest namespace is there (liveoutput.py): "start", for
        job-info to read it; in RUN only (hold()), once no prolog of the
        site's runs (as job-exec's start request would wait: on_prolog)."""
        if self.started or self.ended:
            return
        if not self.holding or self.others:
            self.start_wanted = True
            return
        self.started = True
        self.post(self.job.id, "start", {})

    def resume(self, eventlog, running):
        """A plugin loaded again (reload, restart) while the run waited for
        a prolog of the site's: go on from what its eventlog says, and what
        came since (on_prolog)."""
        seen, self.resuming = self.resuming or [], None
        self.holding, self.others = open_prologs(eventlog)
        self.started = any(e.get("name") == "start" for e in eventlog)
        last = max((e.get("timestamp", 0.0) for e in eventlog), default=0.0)
        for name, description, timestamp in seen:
            if timestamp > last:
                self.on_prolog(name, description, timestamp)
        if not self.holding:
            return  # not held by us: nothing of ours to do
        if running:
            self.finish_when_ready()
        else:
            self.close()  # ended meanwhile: only our prolog is left open

    def on_prolog(self, name, description, timestamp=0.0):
        """job.event.prolog-start / prolog-finish of the job."""
        if self.resuming is not None:
            self.resuming.append((name, description, timestamp))
            return
        if description == PROLOG:
            return
        if name == "prolog-start":
            self.others += 1
        else:
            self.others = max(0, self.others - 1)
            if self.start_wanted:
                self.post_start()
            self.finish_when_ready()

    def end_with(self, wait_status):
        """The remote job of a job released while it ran (starting.py) has
        ended with wait_status: finish the same way, once ready."""
        self.wait_status = int(wait_status)
        self.finish_when_ready()

    def finish_when_ready(self):
        if self.wait_status is None or self.others or self.ended or not self.holding:
            return
        self.ended = True
        job = self.job.id
        if not self.started:
            self.started = True
            self.post(job, "start", {})
        self.post(job, "finish", {"status": self.wait_status})
        self.post(job, "release", {"ranks": "all", "final": True})
        self.close()

    def job_ended(self):
        """job.state.cleanup: ended by our finish, or otherwise while held
        (a prolog failed, a cancel): then our prolog is closed."""
        if not self.ended:
            self.close()

    def close(self):
        """Close our prolog: the job may be clean."""
        if self.holding:
            self.holding = False
            self.post(self.job.id, "prolog-finish", {"description": PROLOG, "status": 0})
