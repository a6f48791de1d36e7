"""A target's job-manager journal: its jobs' events as they are posted.

An eventlog watch (watch.py) sees a remote event only once the target's
job-manager has committed it to the KVS, which it does in batches about
10 ms apart, and job-info has read it back: the end of a remote job comes
that much later than it happened.  The journal (job-manager.events-journal)
sends each event as it is posted.  One journal per connection, opened with
it (before any job is sent there), serves every job delegated over that
connection: a job whose remote submit the journal saw, with this job's
origin record in its jobspec, takes its remote events from the journal
and needs no watch of its own (one request less per job for the target's
job-info).  The journal saw every event of such a job, in order.  Jobs
it did not see submitted (sent before it was open, followed again after a
reload or a reconnect) are followed by their watch, and so are its jobs
once it ends (Following.journal_ended): a lost connection ends both,
and the job is followed again, by a watch, once the target answers.

Only the target's instance owner may read its journal: for anyone else it
answers EPERM, and jobs are followed by their watches, as they are with
journal=false.  The journal sends, at the start, the events of every
job active on the target (the backlog, not used here), then each event of
the names in WANTED, for every job of the target.
"""

import errno
import syslog

import flux.constants
from flux.eventlog import EventLogEvent

from ..jobspec import origin_of, same_origin
from ..text import shown
from .reactor import guard, log

#: The events a followed job needs (RemoteOutcome), "urgency" (a move's
#: hold shows: move.py), and "submit", whose jobspec names the local job
#: (its origin record).
WANTED = ("submit", "urgency", "alloc", "start", "exception", "finish", "clean")

#: Remote jobs of ours whose submit the journal saw before their local job
#: follows them (the submit's answer comes after the target's first events):
#: at most this many are held.
MAX_UNCLAIMED = 1024

#: The id of the journal's answer that ends its backlog.
END_OF_BACKLOG = (-1, flux.constants.FLUX_JOBID_ANY)


class RemoteJournal:
    def __init__(self, remote):
        self.remote = remote
        self.runtime = remote.runtime
        self.outgoing = None
        self.caught_up = False  # the backlog is over: events are live
        self.over = None  # why the journal ended, once it has
        self.unclaimed = {}  # remote id -> [events], of our jobs not following yet
        self.followers = {}  # remote id -> job
        self.why_over = None

    def start(self):
        self.outgoing = self.remote.request(
            1024,
            lambda h: h.rpc(
                "job-manager.events-journal",
                {"allow": {name: 1 for name in WANTED}},
                flags=flux.constants.FLUX_RPC_STREAMING,
            ),
            self.on_answer,
        )
        return self

    def on_answer(self, future):
        if self.over:
            return
        try:
            answer = future.get()
        except OSError as exc:
            self.end(exc)
            return
        except ValueError as exc:
            # Not JSON, not UTF-8.  Taken (reset) all the same: an answer
            # left unread would stop every one after it.
            future.reset()
            self.malformed("an answer that is not JSON", str(exc))
            return
        future.reset()
        if not isinstance(answer, dict) or not isinstance(answer.get("events"), list):
            self.malformed("an answer that is not a journal's", answer)
            return
        remote_id = answer.get("id")
        if remote_id in END_OF_BACKLOG:
            self.caught_up = True
            return
        if not self.caught_up or not isinstance(remote_id, int):
            return  # the backlog: jobs submitted before (followed by their watch)
        for entry in answer["events"]:
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("name"), str)
                or not isinstance(entry.get("context", {}), dict)
            ):
                self.malformed("an entry that is not an event", entry)
                continue
            event = EventLogEvent(entry)
            # The alloc event comes with the job's R (redacted): where it runs.
            R = answer.get("R") if event.name == "alloc" else None
            self.on_event(remote_id, event, answer.get("jobspec"), R)

    def malformed(self, what, value):
        """Something a target sent that is no journal answer or event (a
        target may send anything): counted, the first one logged, and let
        go; the next may be right.  A job whose event it was ends all the
        same: its clean comes, or its watch takes over."""
        counts = self.runtime.counts
        counts["journal-malformed"] += 1
        if counts["journal-malformed"] == 1:
            log(
                syslog.LOG_WARNING,
                f"journal of {self.remote.uri}: {what}: {shown(value)} (let go; 'flux jobtap query"
                " delegate.so' counts them: journal-malformed)",
            )

    def state(self):
        """What 'flux jobtap query' says of it: "reading", or "ended: why"."""
        return "reading" if not self.over else f"ended: {self.why_over}"

    def on_event(self, remote_id, event, jobspec, R):
        job = self.followers.get(remote_id)
        if job is not None:
            if event.name == "clean":
                del self.followers[remote_id]
            job.on_journal_event(remote_id, event, R)
            return
        if event.name == "submit":
            origin = origin_of(jobspec) if isinstance(jobspec, dict) else None
            if origin is not None and self.local_job(origin) is not None:
                if len(self.unclaimed) >= MAX_UNCLAIMED:
                    del self.unclaimed[next(iter(self.unclaimed))]
                self.unclaimed[remote_id] = (origin, [(event, None)])
            return
        held = self.unclaimed.get(remote_id)
        if held is not None:
            held[1].append((event, R))
            if event.name == "clean":
                del self.unclaimed[remote_id]  # ended before anyone followed it

    def local_job(self, origin):
        """The job of this load an origin record names, or None."""
        try:
            job = self.runtime.jobs.get(int(origin.get("jobid")))
        except (TypeError, ValueError, OverflowError):
            return None
        if job is None or not same_origin(origin, job.origin):
            return None
        return job

    def follow(self, job, remote_id):
        """job follows remote_id: whether the journal brings its events
        (it saw its submit, made by this job), those so far included."""
        held = self.unclaimed.pop(int(remote_id), None)
        if self.over or held is None or not same_origin(held[0], job.origin):
            return False
        self.followers[int(remote_id)] = job
        for event, R in held[1]:
            if self.followers.get(int(remote_id)) is not job:
                break  # it has ended, or stopped following
            if event.name == "clean":
                del self.followers[int(remote_id)]
            job.on_journal_event(remote_id, event, R)
        return True

    def unfollow(self, job, remote_id):
        if remote_id is not None and self.followers.get(int(remote_id)) is job:
            del self.followers[int(remote_id)]

    def end(self, error):
        """The journal is over (the connection is lost, the target refuses
        it, or its job-manager went away): its jobs go on with their
        watches."""
        self.over = error
        followers, self.followers = list(self.followers.values()), {}
        self.unclaimed.clear()
        for job in followers:
            guard(job.journal_ended, job, self.runtime)(self.remote)
        if error.errno == errno.EPERM:
            why = "not this target's instance owner"
        else:
            why = error.strerror or str(error)
        self.why_over = why
        log(
            syslog.LOG_INFO,
            f"journal of {self.remote.uri} ended ({why}): jobs there are followed"
            " by their eventlog watches alone",
        )
