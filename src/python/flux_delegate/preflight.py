"""The pre-flight: what a candidate target is asked before a job is sent to
it (the resources and limits of the job, never its environment).
"""

import errno
import json
import math

from .jobspec import lookup
from .targets import SELF_DELEGATION
from .text import brief, shown

#: What a feasibility check needs of attributes.system: what schedulers
#: decide with.
FEASIBILITY_SYSTEM_KEYS = ("duration", "queue", "constraints")


def feasibility_jobspec(jobspec):
    """The jobspec a pre-flight sends: resources and what schedulers decide
    with, without the environment, files or user attributes (the whole
    jobspec can be megabytes)."""
    spec = {k: v for k, v in jobspec.items() if k not in ("attributes", "tasks")}
    system = lookup(jobspec, "attributes.system") or {}
    spec["attributes"] = {"system": {k: system[k] for k in FEASIBILITY_SYSTEM_KEYS if k in system}}
    tasks = []
    for task in jobspec.get("tasks") or []:
        if isinstance(task, dict) and isinstance(task.get("command"), list):
            task = dict(task, command=task["command"][:1])
        tasks.append(task)
    spec["tasks"] = tasks
    return spec


# -- Answers to verdicts ------------------------------------------------------
#
# What the job-manager's pre-flight (jobmanager/preflight.py) and the 'flux
# remote check' command both decide from a candidate's answers, so that they
# give the same verdicts.

#: The questions a pre-flight may ask a candidate: name -> RPC topic.  The
#: feasibility check (with feasibility_jobspec()) is always asked; the
#: others when the policy needs them (policies.POLICY_METRICS).
#: ("pending" is the RPC flux.job.JobStats wraps; it is sent as a plain
#: request because in the job-manager every request to a target goes
#: through RemoteInstance.request(), which holds it back while the
#: connection's socket has no room: JobStats would send it itself.)
QUESTIONS = {
    "feasibility": "feasibility.check",
    "pending": "job-list.job-stats",
    "match_time": "sched-fluxion-resource.stats-get",
}

#: Why a candidate that is the source instance itself is infeasible.
THIS_INSTANCE = "this instance itself"


def this_instance_verdict():
    """(verdict, reason) of a candidate that is the instance the job was
    submitted to."""
    return "infeasible", f"{THIS_INSTANCE}: {SELF_DELEGATION}"


def record_answer(candidate, name, result=None, error=None):
    """Record on candidate (a policies.Candidate: verdict, reason, pending,
    match_time) the answer to question 'name': its payload (result) or the
    OSError it failed with (error).  feasibility.check: no error is
    "feasible", ENOSYS (no scheduler there answers it) "unknown", any other
    error "infeasible" with the scheduler's words as the reason."""
    if name == "feasibility":
        if error is None:
            candidate.verdict = "feasible"
        elif error.errno == errno.ENOSYS:
            candidate.verdict = "unknown"
            candidate.reason = "no feasibility service"
        else:
            candidate.verdict = "infeasible"
            candidate.reason = brief(error.strerror or str(error))
    elif name == "pending" and error is None:
        try:
            states = (result or {}).get("job_states", {})
            candidate.pending = sum(int(states.get(k, 0)) for k in ("depend", "priority", "sched"))
        except (AttributeError, TypeError, ValueError, OverflowError):
            error = not_understood(result)
    elif name == "match_time":
        if error is None:
            try:
                stats = (result or {}).get("match", {}).get("succeeded", {}).get("stats", {})
                match_time = float(stats.get("max", 0.0))
                if not math.isfinite(match_time):
                    raise ValueError(match_time)
                candidate.match_time = match_time
            except (AttributeError, TypeError, ValueError):
                error = not_understood(result)
        elif error.errno == errno.ENOSYS:
            candidate.reason = candidate.reason or "runs no Fluxion (no sched-fluxion-resource)"
    if error is not None and name != "feasibility" and not candidate.reason:
        candidate.reason = f"{name}: {error.strerror or error}"


def not_understood(answer):
    """The error of an answer that is not what the question asks for (a
    target may send anything): the candidate's metric stays unknown."""
    return OSError(errno.EPROTO, f"an answer not understood: {shown(answer)}")


def unsent_verdict(error):
    """(verdict, reason) of a candidate whose feasibility question could not
    even be sent (the connection broke)."""
    return "unreachable", error.strerror or str(error)


def expired_verdict(candidate, outstanding, asked, wait):
    """(verdict, reason) of a connected candidate when its time to answer
    is up, with the questions in 'outstanding' still unanswered out of
    'asked' questions (wait: the time it had, as text).  A target that
    answered something is alive, so a feasibility check still unanswered
    is "unknown" (Fluxion's, for one, answers nothing while it loads its
    resource graph); a target that answered nothing is unreachable."""
    if "feasibility" in outstanding and len(outstanding) < asked:
        return "unknown", f"feasibility.check did not answer within {wait}"
    if "feasibility" in outstanding:
        return (
            "unreachable",
            f"connected, but it answered nothing within {wait} (stopped, hung or overloaded)",
        )
    return candidate.verdict, candidate.reason


# -- What a target said, kept for a while -------------------------------------


class FeasibleAnswers:
    """The shapes of job (feasibility_jobspec(), without commands) one
    target answered "feasible" for, each kept 'ttl' seconds from the answer
    (a job of the same shape then needs no question: the job-manager's
    pre-flight is one round trip less).  Only "feasible" is kept: a target
    that has grown since must not go on refusing, and one that has shrunk
    refuses the job itself, as it would a job sent just before it shrank.
    Kept per connection: a target restarted may be a different instance.
    At most 'limit' shapes (the oldest go first)."""

    def __init__(self, ttl, limit=256):
        self.ttl = ttl
        self.limit = limit
        self.answers = {}  # key -> when answered (clock())

    @staticmethod
    def key(spec):
        """The shape of a feasibility_jobspec(): all but task commands."""
        shape = dict(spec)
        shape["tasks"] = [
            {k: v for k, v in task.items() if k != "command"} if isinstance(task, dict) else task
            for task in spec.get("tasks") or []
        ]
        return json.dumps(shape, sort_keys=True)

    def age(self, key, now):
        """Seconds since the target said "feasible" for key, or None if it
        did not, or too long ago."""
        when = self.answers.get(key)
        if when is None or now - when > self.ttl:
            return None
        return now - when

    def feasible(self, key, now):
        if self.ttl <= 0:
            return
        self.answers.pop(key, None)
        if len(self.answers) >= self.limit:
            del self.answers[next(iter(self.answers))]
        self.answers[key] = now
