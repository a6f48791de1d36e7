"""Recovery: find the remote job a submit whose answer was lost may have
made (by its origin record) before submitting again.
"""

import errno
import syslog
import time

import flux
import flux.constants
import flux.job
from flux.job import JobID

from ..jobspec import job_name, origin_of, same_origin
from .outgoing import answer_of
from .phases import ENDED, RECOVERING
from .reactor import Timer, guard, log
from .retry import Retrying

#: Seconds by which a target's clock may lag the source's when looking for
#: a job submitted before an interruption.
CLOCK_SKEW = 600.0

#: The most jobs a target may list for a search (those submitted since the
#: interrupted submit, of the job's name): past that it cannot tell, and
#: says so, rather than hold without end what a target sends.
MAX_LISTED = 65536


def listed(entry):
    """(id, t_submit) of a job a target listed, or None if it is not one."""
    try:
        jobid = entry["id"]
        t_submit = float(entry.get("t_submit", 0.0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(jobid, int) or isinstance(jobid, bool) or jobid < 0:
        return None
    return jobid, t_submit if t_submit == t_submit else 0.0  # NaN: oldest


class Recovery:
    """Find the job an interrupted submit may have made on its target.

    The source stopped, the plugin was reloaded, or the connection broke,
    after a submit was sent and before its answer came: the target may have
    created the job, and submitting again could run it twice.  So, once the
    submit can no longer be in the target's ingest, the target's jobs with
    this job's name submitted since then are looked up for this job's
    origin (ORIGIN_ATTRIBUTE).  Found: it is followed (or canceled, if the
    local job has ended meanwhile).  Not found: the job is delegated
    afresh.  Target unreachable or not answering for reconnect-timeout: the
    job fails, not submitted twice.

    interrupted: {"uri", "label", "timestamp"} of the submit; 'settled' is
    when it can no longer be pending.  'known' are remote jobs this job had
    before on that target (an earlier submission): never adopted.
    """

    def __init__(self, job, interrupted, settled, known=()):
        self.job = job
        self.id = job.id  # guard() reports errors against it
        self.runtime = job.runtime  # and through its load
        self.uri = interrupted["uri"]
        self.label = interrupted["label"]
        self.since = interrupted["timestamp"]
        self.settled = settled
        self.known = {int(jobid) for jobid in known}
        self.remote = None
        self.generation = 0  # answers of an abandoned search are ignored
        self.watchdog = None  # of the request in progress
        self.retrying = None

    def start(self):
        # Wall-clock: 'settled' comes from eventlog timestamps.
        wait = max(self.settled - time.time(), 0.0)
        log(
            syslog.LOG_INFO,
            f"{self.job.name}: a submit to {self.uri} was interrupted; looking"
            " for its job there" + (f" in {wait:.1f}s" if wait > 0 else ""),
        )
        # Deadline: reconnect-timeout after the submit can no longer be
        # pending in the target.
        self.retrying = Retrying(
            self.runtime,
            self.uri,
            self.search,
            self.give_up,
            deadline=time.monotonic() + wait + self.runtime.reconnect_timeout,
            wanted=lambda: self.wanted,
            job=self,
        )
        self.retrying.start(wait)

    @property
    def wanted(self):
        return self.job.phase in (RECOVERING, ENDED)

    def retry(self, message):
        """Something failed or did not answer: search again from the start
        after reconnect-interval, until the deadline."""
        self.generation += 1
        self.stop_watchdog()
        self.retrying.failed(message)

    def give_up(self, message):
        if self.job.phase == RECOVERING:
            self.job.fail(
                f"a submit to {self.uri} was interrupted, and whether it made a"
                f" job there cannot be told: {message} (not submitted again, so"
                " that the job cannot run twice)"
            )
        elif self.job.phase == ENDED:
            log(
                syslog.LOG_ERR,
                f"{self.job.name}: cannot look on {self.uri} for a job made by an"
                f" interrupted submit: {message}; one may run there",
            )

    def ask(self, send, callback):
        """A request of this search, answered within submit-timeout."""
        generation = self.generation

        def answered_in_time(future):
            if generation == self.generation and self.wanted:
                callback(future)

        self.arm()
        self.remote.request(1024, send, answered_in_time, job=self)

    def arm(self):
        """(Re)start the watchdog of the request in progress."""
        generation = self.generation
        self.stop_watchdog()
        self.watchdog = Timer(
            self.runtime.submit_timeout,
            guard(
                lambda: generation == self.generation
                and self.retry(f"no answer within {self.runtime.submit_timeout:g}s"),
                self,
            ),
            self.runtime,
        )

    def stop_watchdog(self):
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.cancel()

    def search(self, remote):
        if not self.wanted:
            return
        self.remote = remote
        self.generation += 1
        self.found_jobs = []
        self.first = True
        constraint = {"t_submit": [f">={self.since - CLOCK_SKEW:.6f}"]}
        name = job_name(self.job.jobspec)
        if name:
            constraint = {"and": [constraint, {"name": [name]}]}
        self.ask(
            lambda h: flux.job.job_list(
                h,
                max_entries=0,
                attrs=["t_submit"],
                userid=flux.constants.FLUX_USERID_UNKNOWN,
                constraint=constraint,
            ),
            self.on_list,
        )

    def on_list(self, future):
        """job-list streams its answer: one job per response (the first
        with "version": 1), then ENODATA.  Without a version, the first
        response is the whole answer (version 0)."""
        try:
            response = future.get()
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                self.check_candidates()
            else:
                self.retry(f"listing its jobs: {exc.strerror or exc}")
            return
        except ValueError:
            response = None  # not JSON
        jobs = response.get("jobs", []) if isinstance(response, dict) else None
        if not isinstance(jobs, list):
            self.retry("listing its jobs: an answer not understood")
            return
        # Only what is used (id, t_submit) of what a target sends is kept.
        self.found_jobs += [listed(j) for j in jobs if listed(j) is not None]
        if len(self.found_jobs) > MAX_LISTED:
            self.retry(f"listing its jobs: more than {MAX_LISTED} since the submit")
            return
        if self.first and "version" not in response:
            self.check_candidates()
            return
        self.first = False
        self.arm()
        future.reset()  # the next response comes to this callback again

    def check_candidates(self):
        jobs = [j for j in self.found_jobs if j[0] not in self.known]
        jobs.sort(key=lambda j: j[1], reverse=True)  # newest first
        self.candidates = [jobid for jobid, _ in jobs]
        self.check_next()

    def check_next(self):
        if not self.candidates:
            self.stop_watchdog()
            self.not_found()
            return
        jobid = self.candidates.pop(0)
        self.ask(
            lambda h: flux.job.kvslookup.job_info_lookup(h, jobid, keys=["jobspec"]),
            lambda future: self.on_jobspec(future, jobid),
        )

    def on_jobspec(self, future, jobid):
        try:
            # Text that is not UTF-8 is the target's error answer (EPROTO).
            jobspec = answer_of(lambda: future.get_decode()["jobspec"])
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EPERM):  # purged, not ours
                self.check_next()
            else:
                self.retry(f"looking up job {JobID(jobid).f58}: {exc.strerror or exc}")
            return
        if same_origin(origin_of(jobspec), self.job.origin):
            self.stop_watchdog()
            self.found(jobid)
        else:
            self.check_next()

    def found(self, remote_id):
        job = self.job
        if job.phase == RECOVERING:
            job.submitting.adopt(self, remote_id)
        elif job.phase == ENDED:  # ended while looking
            job.uri, job.remote, job.remote_id = self.uri, self.remote, JobID(remote_id)
            job.cancel_remote(job.canceled_reason or f"job {job.name} ended")

    def not_found(self):
        job = self.job
        if job.phase != RECOVERING:
            return
        log(
            syslog.LOG_INFO,
            f"{job.name}: the interrupted submit made no job on {self.uri}",
        )
        if job.doomed is not None:
            job.fail(job.doomed)
            return
        log(syslog.LOG_INFO, f"{job.name}: delegating afresh")
        job.choosing.start()
