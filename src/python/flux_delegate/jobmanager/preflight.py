"""The pre-flight on the job-manager's reactor: candidates asked
concurrently, answers turned into a choice.
"""

import errno
import syslog

from ..preflight import feasibility_jobspec
from ..targets import SELF_DELEGATION
from ..text import brief
from .reactor import Timer, guard, log
from .remote import FailedRequest, payload_size


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
        self.done = False

    def start(self):
        for c in self.candidates:
            if self.job.runtime.is_this_instance(c.uri):
                c.verdict, c.reason = "infeasible", f"this instance itself: {SELF_DELEGATION}"
        asked = [c for c in self.candidates if c.verdict is None]
        if not asked:
            self.finish()
            return
        for c in asked:
            self.waiting[id(c)] = [set(), None, []]  # queries, timer, requests
        for c in asked:
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
        nbytes = payload_size(spec)
        wanted = []
        if remote.oversized(nbytes):
            c.verdict = "unknown"
            c.reason = f"jobspec too large to check ({nbytes} bytes)"
        else:
            wanted.append(
                ("feasibility", nbytes, lambda h: h.rpc("feasibility.check", {"jobspec": spec}))
            )
        if "pending" in self.metrics:
            wanted.append(("pending", 1024, lambda h: h.rpc("job-list.job-stats", {})))
        if "match_time" in self.metrics:
            wanted.append(("match_time", 1024, lambda h: h.rpc("sched-fluxion-resource.stats-get")))
        if not wanted:
            self.settle(c, c.verdict, c.reason)
            return
        outstanding, _, outgoing = self.waiting[id(c)]
        outstanding.update(name for name, _, _ in wanted)
        self.waiting[id(c)][1] = Timer(
            self.job.runtime.preflight_timeout, guard(lambda: self.expire(c), self.job)
        )
        for name, nbytes, send in wanted:
            outgoing.append(
                remote.request(
                    nbytes, send, lambda f, c=c, name=name: self.answered(c, name, f), self.job
                )
            )

    def answered(self, c, name, future):
        if id(c) not in self.waiting:
            return
        if isinstance(future, FailedRequest) and name == "feasibility":
            self.settle(c, "unreachable", future.error.strerror or str(future.error))
            return
        try:
            result = future.get()
            error = None
        except OSError as exc:
            result, error = None, exc
        if name == "feasibility":
            if error is None:
                c.verdict = "feasible"
            elif error.errno == errno.ENOSYS:
                c.verdict = "unknown"
                c.reason = "no feasibility service"
            else:
                c.verdict = "infeasible"
                c.reason = brief(error.strerror or str(error))
        elif name == "pending" and error is None:
            states = result.get("job_states", {})
            c.pending = sum(int(states.get(k, 0)) for k in ("depend", "priority", "sched"))
        elif name == "match_time":
            if error is None:
                stats = result.get("match", {}).get("succeeded", {}).get("stats", {})
                c.match_time = float(stats.get("max", 0.0))
            elif error.errno == errno.ENOSYS:
                c.reason = c.reason or "runs no Fluxion (no sched-fluxion-resource)"
        if error is not None and name != "feasibility" and not c.reason:
            c.reason = f"{name}: {error.strerror or error}"
        outstanding = self.waiting[id(c)][0]
        outstanding.discard(name)
        if not outstanding:
            self.settle(c, c.verdict, c.reason)

    def expire(self, c):
        """preflight-timeout: a target that answered something is alive, so
        a feasibility check still unanswered is "unknown" (Fluxion's, for
        one, answers nothing while it loads its resource graph); a target
        that answered nothing is unreachable."""
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
        if "feasibility" in outstanding and len(outstanding) < len(outgoing):
            self.settle(c, "unknown", f"feasibility.check did not answer within {wait}")
        elif "feasibility" in outstanding:
            self.settle(
                c,
                "unreachable",
                f"connected, but it answered nothing within {wait}"
                " (stopped, hung or overloaded)",
            )
        else:
            self.settle(c, c.verdict, c.reason)

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
