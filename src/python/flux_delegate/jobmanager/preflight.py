"""The pre-flight on the job-manager's reactor: candidates asked
concurrently, answers turned into a choice.
"""

import errno
import syslog
import time

from ..preflight import (
    QUESTIONS,
    FeasibleAnswers,
    expired_verdict,
    feasibility_jobspec,
    record_answer,
    this_instance_verdict,
    unsent_verdict,
)
from .reactor import Timer, guard, log, then
from .outgoing import FailedRequest
from .remote import payload_size


#: A target's cached "feasible" (preflight-cache) is taken only if it has
#: sent something within this many seconds: otherwise the question is asked,
#: and is the proof of life (a stopped target is found out within
#: preflight-timeout, not submit-timeout, and a policy chooses another).
ALIVE_WITHIN = 1.0


class Preflight:
    """Ask every candidate, concurrently, whether it could ever run the job
    (feasibility.check: ENOSYS means no scheduler there answers it, which
    is "unknown", not "no"), and for the metrics the policy needs.  Each
    candidate gets preflight-timeout seconds once connected (connecting has
    connect-timeout); then on_done(candidates) is called, once."""

    def __init__(self, job, candidates, metrics, on_done):
        self.job = job
        self.candidates = candidates
        self.metrics = metrics
        self.on_done = on_done
        self.waiting = {}  # id(candidate) -> [outstanding query names, timer]
        self.shapes = {}  # id(candidate) -> its FeasibleAnswers key
        self.done = False

    def start(self):
        for c in self.candidates:
            if not c.local and self.job.runtime.is_this_instance(c.uri):
                c.verdict, c.reason = this_instance_verdict()
        asked = [c for c in self.candidates if c.verdict is None]
        if not asked:
            self.finish()
            return
        for c in asked:
            self.waiting[id(c)] = [set(), None, []]  # queries, timer, requests
        for c in asked:
            if c.local:
                self.ask_this_instance(c)
                continue
            self.job.runtime.connections.get(
                c.uri,
                lambda remote, c=c: self.connected(c, remote),
                lambda message, c=c: self.settle(c, "unreachable", message),
                job=self.job,
            )

    def connected(self, c, remote):
        if id(c) not in self.waiting:
            return
        c.remote = remote
        spec = feasibility_jobspec(self.job.remote_spec)
        wanted = []
        key = self.shapes[id(c)] = FeasibleAnswers.key(spec)
        now = time.monotonic()
        age = remote.feasible_answers.age(key, now)
        if age is not None and now - remote.last_heard < ALIVE_WITHIN:
            # Said of a job of this shape a moment ago (preflight-cache),
            # by a target that is still talking.
            self.job.runtime.counts["feasibility-cached"] += 1
            c.verdict = "feasible"
            c.reason = f"answered {age:.0f}s ago (preflight-cache)"
        elif remote.oversized(nbytes := payload_size(spec)):
            c.verdict = "unknown"
            c.reason = f"jobspec too large to check ({nbytes} bytes)"
        else:
            self.job.runtime.counts["feasibility-asked"] += 1
            wanted.append(
                (
                    "feasibility",
                    nbytes,
                    lambda h: h.rpc(QUESTIONS["feasibility"], {"jobspec": spec}),
                )
            )
        for name in ("pending", "match_time"):
            if name in self.metrics:
                wanted.append((name, 1024, lambda h, name=name: h.rpc(QUESTIONS[name], {})))
        if not wanted and "estimate" not in self.metrics:
            self.settle(c, c.verdict, c.reason)
            return
        outstanding, _, outgoing = self.waiting[id(c)]
        outstanding.update(name for name, _, _ in wanted)
        self.start_timer(c)
        for name, nbytes, send in wanted:
            outgoing.append(
                remote.request(
                    nbytes, send, lambda f, c=c, name=name: self.answered(c, name, f), self.job
                )
            )
        if "estimate" in self.metrics:
            self.ask_plan(c, remote.schedule)

    def start_timer(self, c):
        self.waiting[id(c)][1] = Timer(
            self.job.runtime.preflight_timeout, guard(lambda: self.expire(c), self.job)
        )

    def ask_plan(self, c, schedule):
        """The candidate's plan (schedule.TargetSchedule: shared by every
        job that asks within estimate-cache); the estimate itself is made
        when the job chooses (estimate_candidates), with what other jobs
        chose meanwhile counted in."""
        self.waiting[id(c)][0].add("estimate")
        schedule.get(lambda plan, error, c=c: self.planned(c, schedule, plan, error))

    def planned(self, c, schedule, plan, error):
        if id(c) not in self.waiting:
            return
        c.plan, c.schedule = plan, schedule
        if error is not None:
            c.basis = f"unknown: {error}"
        outstanding = self.waiting[id(c)][0]
        outstanding.discard("estimate")
        if not outstanding:
            self.settle(c, c.verdict, c.reason)

    def ask_this_instance(self, c):
        """The source as a candidate (include-local): its own scheduler's
        feasibility.check and its own plan, asked of this broker without
        waiting (the job-manager's handle)."""
        spec = feasibility_jobspec(self.job.remote_spec)
        self.waiting[id(c)][0].add("feasibility")
        self.start_timer(c)
        then(
            self.job.runtime.handle.rpc(QUESTIONS["feasibility"], {"jobspec": spec}),
            lambda f, c=c: self.answered(c, "feasibility", f),
            job=self.job,
        )
        self.ask_plan(c, self.job.runtime.local_schedule)

    def answered(self, c, name, future):
        if id(c) not in self.waiting:
            return
        if isinstance(future, FailedRequest) and name == "feasibility":
            self.settle(c, *unsent_verdict(future.error))
            return
        try:
            result = future.get()
            error = None
        except OSError as exc:
            result, error = None, exc
        except ValueError as exc:  # not JSON, not UTF-8: a broken target
            result, error = None, OSError(errno.EPROTO, f"an answer that is not JSON ({exc})")
        record_answer(c, name, result, error)
        if name == "feasibility" and c.verdict == "feasible" and not c.local:
            c.remote.feasible_answers.feasible(self.shapes[id(c)], time.monotonic())
        outstanding = self.waiting[id(c)][0]
        outstanding.discard(name)
        if not outstanding:
            self.settle(c, c.verdict, c.reason)

    def expire(self, c):
        """preflight-timeout: the verdict from what it did answer
        (flux_delegate.preflight.expired_verdict)."""
        entry = self.waiting.get(id(c))
        if entry is None:
            return
        outstanding, _, outgoing = entry
        wait = f"{self.job.runtime.preflight_timeout:g}s"
        unsent = sum(1 for o in outgoing if not o.sent)
        log(
            syslog.LOG_INFO,
            f"{self.job.name}: pre-flight of {c.describe()}: no answer within {wait}"
            f" to {sorted(outstanding)}" + (f" ({unsent} not sent yet)" if unsent else ""),
        )
        if "estimate" in outstanding:
            c.basis = f"unknown: its plan was not read within {wait}"
        self.settle(c, *expired_verdict(c, outstanding, len(outgoing), wait))

    def settle(self, c, verdict, reason):
        entry = self.waiting.pop(id(c), None)
        if entry is None:
            return
        if entry[1] is not None:
            entry[1].cancel()
        for outgoing in entry[2]:
            outgoing.withdraw()  # still queued: no longer needed
        c.verdict, c.reason = verdict, reason
        if not self.waiting:
            self.finish()

    def finish(self):
        if not self.done:
            self.done = True
            self.on_done(self.candidates)


def estimate_candidates(request, candidates):
    """Each candidate's estimated start for the job (request: its
    estimate.Request, None if its jobspec says no), from the plan its
    pre-flight got; returns {id(candidate): the fit found}, for
    reserve_choice."""
    fits = {}
    for c in candidates:
        if c.plan is None or not c.usable:
            continue
        if request is None:
            c.basis = "unknown: the job's resources are not understood"
            continue
        estimate, fit = c.plan.estimate(request)
        c.estimate, c.idle, c.basis = estimate.seconds, estimate.idle, estimate.basis
        if c.estimate is None:
            c.basis += ": the job does not start within the plan"
        fits[id(c)] = fit
    return fits


def reserve_choice(request, candidate, fits):
    """The chosen candidate plans the job in at once, so that the next
    job's estimate counts it (TargetSchedule.reserve)."""
    fit = fits.get(id(candidate))
    if fit is not None and request is not None:
        candidate.schedule.reserve(request, fit)
