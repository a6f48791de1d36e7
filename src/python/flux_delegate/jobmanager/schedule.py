"""A target's schedule, read on the job-manager's reactor and kept for a
while (estimate-cache), so that a stream of jobs costs one read per
target, not one per job (flux_delegate.estimate is the model).

One read is three questions, asked at once: the target's resources
(resource.sched-status), its running and schedulable jobs (job-list.list:
PRIORITY, SCHED and RUN, with their requests, time limits, expirations
and annotations) and its queue policy (sched-fluxion-qmanager.params;
ENOSYS there: sched-simple, whose queue is fcfs).  Every job that asks
while a read is out waits for that read; every job this instance sends
there is planned into the plan at once (reserve), and kept for the next
read until the target lists it.
"""

import errno
import json
import syslog
import time

from flux.core.inner import ffi, lib

from ..estimate import JOB_ATTRS, MAX_PLANNED, build_plan, queue_policy
from ..text import shown
from .reactor import log

#: job-list's state bits of the jobs a plan needs: PRIORITY, SCHED, RUN.
LISTED_STATES = 4 | 8 | 16

#: The most jobs job-list is asked for: the running, and MAX_PLANNED
#: pending behind them (a huge answer costs the job-manager's thread).
MAX_LISTED = 4 * MAX_PLANNED

#: A job sent to a target is planned again by a read that does not list it
#: if it was sent less than this many seconds before the read was asked
#: (job-list learns of jobs from the journal, a moment after the submit is
#: answered); sent earlier and not listed, it has ended.
SENT_LAG = 1.0

#: The largest answer a plan is read from (bytes): MAX_LISTED jobs take
#: well under 1 MB; a target that sends more is not decoded on the
#: job-manager's thread, and cannot tell.
MAX_ANSWER = 4 * 1024 * 1024

QUESTIONS = {
    "status": ("resource.sched-status", {}),
    "jobs": (
        "job-list.list",
        {
            "max_entries": MAX_LISTED,
            "attrs": list(JOB_ATTRS),
            "constraint": {"and": [{"states": [LISTED_STATES]}]},
        },
    ),
    "policy": ("sched-fluxion-qmanager.params", {}),
}


class TargetSchedule:
    """The plan of one target (or of this instance), refreshed when older
    than 'ttl' seconds.  send(topic, payload, callback) sends a request
    without blocking and calls callback(future) with its answer, or with
    a failed request."""

    def __init__(self, name, send, ttl):
        self.name = name
        self.send = send
        self.ttl = ttl
        self.plan = None
        self.read_at = None  # time.monotonic() of the plan's read
        self.reading = None  # {question: answer} of a read under way
        self.read_started = None
        self.waiters = []  # callbacks (plan, error) for the read under way
        self.sent = []  # [(when, Request)] sent here since, not listed yet
        self.error = None
        self.reads = 0

    def get(self, callback):
        """callback(plan, None) with a plan no older than ttl, now or once
        read; callback(None, reason) if the target cannot tell."""
        now = time.monotonic()
        if self.plan is not None and now - self.read_at < self.ttl:
            callback(self.plan, None)
            return
        self.waiters.append(callback)
        if self.reading is not None and now - self.read_started < max(self.ttl, 10.0):
            return  # answered with the read under way
        self.read(now)

    def read(self, now):
        self.reads += 1
        self.reading = {}
        self.read_started = now
        self.asked_at = time.time()
        reading = self.reading
        for name, (topic, payload) in QUESTIONS.items():
            self.send(topic, payload, lambda f, name=name: self.answered(reading, name, f))

    def answered(self, reading, name, future):
        if reading is not self.reading:
            return  # an older read, given up
        nbytes = answer_size(future)
        try:
            if nbytes is not None and nbytes > MAX_ANSWER:
                raise OSError(errno.E2BIG, f"an answer of {nbytes} bytes, more than a plan needs")
            reading[name] = (future.get(), None)
        except OSError as exc:
            reading[name] = (None, exc)
        except ValueError as exc:  # not JSON
            reading[name] = (None, OSError(errno.EPROTO, f"an answer that is not JSON ({exc})"))
        if len(reading) == len(QUESTIONS):
            self.reading = None
            self.build(reading)

    def build(self, answers):
        plan, error = None, None
        status, status_error = answers["status"]
        listing, jobs_error = answers["jobs"]
        params, policy_error = answers["policy"]
        if status_error is not None:
            error = f"resource.sched-status: {status_error.strerror or status_error}"
        elif jobs_error is not None:
            error = f"job-list.list: {jobs_error.strerror or jobs_error}"
        elif policy_error is not None and policy_error.errno != errno.ENOSYS:
            error = f"sched-fluxion-qmanager.params: {policy_error.strerror or policy_error}"
        else:
            try:
                policy = queue_policy(params) if policy_error is None else "fcfs"
                jobs = listing["jobs"][:MAX_LISTED]  # no more than was asked for
                listed = {job.get("id") for job in jobs if isinstance(job, dict)}
                cutoff = self.read_started - SENT_LAG
                self.sent = [s for s in self.sent if s[0] > cutoff and s[2] not in listed]
                plan = build_plan(
                    status, jobs, policy, self.asked_at, extra_pending=[(s[1], s[2]) for s in self.sent]
                )
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                error = f"an answer not understood ({type(exc).__name__}: {shown(str(exc))})"
        if error is not None and error != self.error:
            log(syslog.LOG_INFO, f"estimate of {self.name}: {error}")
        self.error = error
        self.plan = plan
        self.read_at = time.monotonic()
        waiters, self.waiters = self.waiters, []
        for callback in waiters:
            callback(plan, error)

    def reserve(self, request, fit, remote_id=None):
        """A job was just sent here: plan it in now, and in the next reads
        until the target lists it as remote_id."""
        if self.plan is not None:
            self.plan.reserve(request, *fit)
        self.sent.append((time.monotonic(), request, remote_id))

    def listed(self, remote_id, request):
        """The job sent (reserve) is now known by its id on the target."""
        for i, (when, r, _) in enumerate(self.sent):
            if r is request:
                self.sent[i] = (when, r, int(remote_id))
                return

    def query(self):
        age = None if self.read_at is None else round(time.monotonic() - self.read_at, 3)
        return {
            "age": age,
            "reads": self.reads,
            "policy": self.plan.policy if self.plan else None,
            "error": self.error,
        }


def answer_size(future):
    """Bytes of an RPC future's answer payload, without decoding it (None
    if it has none, or is no RPC answer)."""
    pimpl = getattr(future, "pimpl", None)
    if pimpl is None:
        return None
    data = ffi.new("const void **")
    size = ffi.new("size_t *")
    if lib.flux_rpc_get_raw(pimpl.handle, data, size) < 0:
        return None
    return size[0]


def remote_sender(remote):
    """TargetSchedule's send() over a connection to a target (its
    backpressure included)."""

    def send(topic, payload, callback):
        nbytes = len(json.dumps(payload)) + 256
        remote.request(nbytes, lambda h: h.rpc(topic, payload), callback, None)

    return send


def local_sender(runtime):
    """TargetSchedule's send() to this instance's own services."""
    from .reactor import then

    def send(topic, payload, callback):
        then(runtime.handle.rpc(topic, payload), callback)

    return send

