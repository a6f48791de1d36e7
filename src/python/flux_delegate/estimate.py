"""When would a job start on a target?  A model of the target's schedule,
side-effect free: built from what the target tells anyone who asks (its
resources, its running jobs with their expirations, its pending jobs in
priority order with their requests and time limits), the pending jobs
planned as its queue policy would, and the new job fitted into that plan.

No allocation, reservation or job is made on the target to know it.  This
module is pure: jobmanager/schedule.py asks the questions and keeps the
answers for a while (estimate-cache); preflight.record_answer hands the
answers here.

The plan, per node (broker rank), is a step function of the cores and
gpus in use from now on.  Running jobs hold theirs until their expiration
(for ever without one); pending jobs are placed in priority order at the
earliest time they fit for their whole time limit:
  fcfs          no job starts before one ahead of it (Fluxion's fcfs stops
                at the first job that cannot start);
  easy, hybrid, conservative
                a job starts in any hole it fits that delays no job planned
                ahead of it (conservative backfilling: for easy, whose
                later jobs hold no reservation, an estimate that can be
                early).
A pending job Fluxion has reserved (its sched.t_estimate annotation) is
planned no earlier than Fluxion's own time.  Time limits are what
schedulers plan with; jobs that end sooner than their limits make a
target's estimate late, never early, until it is read again.
"""

import bisect
import math

INF = math.inf

#: Queue policies the plan follows ("fcfs": strictly in order; the others:
#: backfilling).  Fluxion's default is fcfs; sched-simple's is fcfs too
#: (its default queue-depth, 8, still takes jobs strictly in order).
BACKFILLING_POLICIES = ("easy", "hybrid", "conservative")

#: The most pending jobs of a target the plan places one by one: past it,
#: an estimate is a lower bound and says so (a target with a deep queue
#: costs the job-manager's thread no more than this).
MAX_PLANNED = 400

#: The most nodes of a target planned one by one; a larger target is
#: planned as one pool of its cores and gpus (its estimate ignores how the
#: free cores are spread over nodes).
MAX_NODES = 1024


def idset(text):
    """The ids of an RFC 22 idset string ("0-3,5"); ValueError if it is
    not one.  (flux.idset needs libflux-idset, which the pure tests lack.)"""
    ids = []
    if not isinstance(text, str):
        raise ValueError(f"not an idset: {text!r}")
    for part in text.split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        low, high = int(low), int(high or low)
        if low < 0 or high < low or high - low > 1 << 20:
            raise ValueError(f"not an idset: {text!r}")
        ids.extend(range(low, high + 1))
    return ids


# -- What is asked for --------------------------------------------------------


class Request:
    """The resources of one job, as a plan places them: nnodes nodes of
    'cores' cores and 'gpus' gpus each (nnodes None: cores and gpus from
    anywhere, totals), for 'duration' seconds (INF: no time limit)."""

    __slots__ = ("nnodes", "cores", "gpus", "duration", "exclusive")

    def __init__(self, cores, gpus=0, nnodes=None, duration=INF, exclusive=False):
        self.nnodes = nnodes
        self.cores = cores
        self.gpus = gpus
        self.duration = duration
        self.exclusive = exclusive

    @property
    def total_cores(self):
        return self.cores * (self.nnodes or 1)

    def __repr__(self):
        return (
            f"Request(cores={self.cores}, gpus={self.gpus}, nnodes={self.nnodes},"
            f" duration={self.duration})"
        )


def count_of(resource):
    count = resource.get("count", 1)
    if isinstance(count, dict):  # a range: the scheduler gives at least min
        count = count.get("min", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"not a resource count: {count!r}")
    return count


def request_of_jobspec(jobspec):
    """The Request of a jobspec (version 1: node, slot, core and gpu
    vertices), its time limit attributes.system.duration (0: none).
    ValueError if it is not one."""
    totals = {"node": 0, "core": 0, "gpu": 0}
    exclusive = False

    def walk(resources, multiplier, depth=0):
        nonlocal exclusive
        if depth > 16 or not isinstance(resources, list):
            raise ValueError("resources: not a list of resource vertices")
        for resource in resources:
            if not isinstance(resource, dict):
                raise ValueError("resources: a vertex that is not a table")
            n = multiplier * count_of(resource)
            kind = resource.get("type")
            if kind in totals:
                totals[kind] += n
            if kind == "node" and resource.get("exclusive"):
                exclusive = True
            walk(resource.get("with", []), n, depth + 1)

    walk(jobspec.get("resources"), 1)
    system = (jobspec.get("attributes") or {}).get("system") or {}
    duration = system.get("duration", 0)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
        raise ValueError(f"attributes.system.duration: not a duration: {duration!r}")
    nnodes = totals["node"] or None
    per = nnodes or 1
    return Request(
        cores=-(-totals["core"] // per),
        gpus=-(-totals["gpu"] // per),
        nnodes=nnodes,
        duration=duration or INF,
        exclusive=exclusive,
    )


# -- One node's plan ----------------------------------------------------------


class NodeProfile:
    """What one node has in use from 'now' on: a step function, used[i]
    cores and gpus from times[i] to times[i+1] (the last for ever)."""

    __slots__ = ("rank", "cores", "gpus", "times", "used_cores", "used_gpus")

    def __init__(self, rank, cores, gpus, now):
        self.rank = rank
        self.cores = cores
        self.gpus = gpus
        self.times = [now]
        self.used_cores = [0]
        self.used_gpus = [0]

    def split(self, when):
        """The index of the step starting at 'when' (made if need be)."""
        i = bisect.bisect_right(self.times, when) - 1
        if i < 0:
            return 0
        if self.times[i] == when:
            return i
        self.times.insert(i + 1, when)
        self.used_cores.insert(i + 1, self.used_cores[i])
        self.used_gpus.insert(i + 1, self.used_gpus[i])
        return i + 1

    def hold(self, start, end, cores, gpus):
        first = self.split(max(start, self.times[0]))
        last = len(self.times) if end == INF else self.split(end)
        for i in range(first, last):
            self.used_cores[i] += cores
            self.used_gpus[i] += gpus

    def windows(self, cores, gpus, duration, not_before):
        """The times a job of cores and gpus on this node could start for
        'duration': a list of [first, last] start times, in order."""
        if cores > self.cores or gpus > self.gpus:
            return []
        room_cores, room_gpus = self.cores - cores, self.gpus - gpus
        found = []
        start = None
        times = self.times
        for i, when in enumerate(times):
            fits = self.used_cores[i] <= room_cores and self.used_gpus[i] <= room_gpus
            if fits:
                if start is None:
                    start = max(when, not_before)
                continue
            if start is not None and when - start >= duration:
                found.append([start, when - duration])
            start = None
        if start is not None:
            found.append([start, INF])
        return found

    def idle_at(self, when):
        i = max(0, bisect.bisect_right(self.times, when) - 1)
        return self.cores - self.used_cores[i]


# -- A target's plan ----------------------------------------------------------


class Estimate:
    """A job's estimated start on a target: 'start' (epoch seconds; INF:
    not within the plan), seconds from 'now', the cores its nodes would
    leave idle then, and what it was based on."""

    def __init__(self, start, now, idle, basis):
        self.start = start
        self.now = now
        self.idle = idle
        self.basis = basis

    @property
    def seconds(self):
        """Seconds from now (None: never within the plan)."""
        if self.start == INF:
            return None
        return round(max(0.0, self.start - self.now), 3)


class Plan:
    """A target's schedule from 'now' on, as its queue policy would run it:
    its nodes' profiles, and for fcfs the start no later job may precede."""

    def __init__(self, nodes, now, policy="fcfs"):
        self.now = now
        self.policy = policy if policy in BACKFILLING_POLICIES else "fcfs"
        self.floor = now  # fcfs: the latest start planned so far
        self.pooled = len(nodes) > MAX_NODES
        if self.pooled:
            pool = NodeProfile(-1, sum(n[1] for n in nodes), sum(n[2] for n in nodes), now)
            self.nodes = [pool]
        else:
            self.nodes = [NodeProfile(rank, cores, gpus, now) for rank, cores, gpus in nodes]
        self.by_rank = {node.rank: node for node in self.nodes}
        self.planned = 0
        self.unplanned = 0  # pending jobs past MAX_PLANNED
        self.estimated = 0  # pending jobs placed at Fluxion's t_estimate
        self.unlimited = 0  # pending jobs ahead with no time limit
        self.starts = {}  # id of a pending job -> its planned start

    def hold_running(self, ranks, cores, gpus, expiration):
        """A running job on 'ranks' with cores and gpus in all, until
        expiration (epoch; 0 or None: no limit)."""
        end = expiration if expiration and expiration > self.now else INF
        if expiration and expiration <= self.now:
            end = self.now  # past its limit: about to be killed
        if self.pooled:
            self.nodes[0].hold(self.now, end, cores, gpus)
            return
        ranks = [r for r in ranks if r in self.by_rank]
        if not ranks:
            return
        per_cores, per_gpus = -(-cores // len(ranks)), -(-gpus // len(ranks))
        for rank in ranks:
            self.by_rank[rank].hold(self.now, end, per_cores, per_gpus)

    def fit(self, request, not_before=None):
        """(start, [(node, cores, gpus)]) of the earliest place the request
        fits for its whole duration; (INF, []) if it never does."""
        not_before = max(self.now, not_before or self.now)
        if self.policy == "fcfs":
            not_before = max(not_before, self.floor)
        if self.pooled or request.nnodes is None:
            return self.fit_anywhere(request, not_before)
        return self.fit_on_nodes(request, not_before)

    def fit_on_nodes(self, request, not_before):
        events = []  # (time, +1 opens / -1 closes, node)
        for node in self.nodes:
            cores = node.cores if request.exclusive else request.cores
            gpus = node.gpus if request.exclusive else request.gpus
            for first, last in node.windows(cores, gpus, request.duration, not_before):
                events.append((first, 0, node, cores, gpus))
                if last != INF:
                    events.append((last, 1, node, cores, gpus))
        events.sort(key=lambda e: (e[0], e[1]))
        open_now = {}
        for when, closes, node, cores, gpus in events:
            if closes:
                open_now.pop(node.rank, None)
                continue
            open_now[node.rank] = (node, cores, gpus)
            if len(open_now) >= request.nnodes:
                # Best fit among those open: fewest cores left idle.
                chosen = sorted(
                    open_now.values(), key=lambda t: (t[0].idle_at(when) - t[1], t[0].rank)
                )[: request.nnodes]
                return when, chosen
        return INF, []

    def fit_anywhere(self, request, not_before):
        """Cores and gpus from any nodes: the pool of them all (each node's
        share taken as it has room)."""
        pool_cores = sum(n.cores for n in self.nodes)
        pool_gpus = sum(n.gpus for n in self.nodes)
        if request.cores > pool_cores or request.gpus > pool_gpus:
            return INF, []
        times = sorted({t for n in self.nodes for t in n.times if t >= not_before} | {not_before})
        for when in times:
            end = when + request.duration
            shares, need_cores, need_gpus = [], request.cores, request.gpus
            for node in self.nodes:
                free_cores, free_gpus = node_room(node, when, end)
                take_cores, take_gpus = min(free_cores, need_cores), min(free_gpus, need_gpus)
                if take_cores or take_gpus:
                    shares.append((node, take_cores, take_gpus))
                    need_cores -= take_cores
                    need_gpus -= take_gpus
                if need_cores <= 0 and need_gpus <= 0:
                    return when, shares
        return INF, []

    def reserve(self, request, start, shares):
        """Hold what fit() found, from start for the request's duration."""
        if start == INF:
            return
        end = start + request.duration
        for node, cores, gpus in shares:
            node.hold(start, end, cores, gpus)
        self.floor = max(self.floor, start)

    def add_pending(self, request, t_estimate=None, jobid=None):
        """Plan one pending job, in priority order (its start is kept
        by jobid, for start_of)."""
        if self.planned >= MAX_PLANNED:
            self.unplanned += 1
            return
        self.planned += 1
        if request.duration == INF:
            self.unlimited += 1
        if t_estimate:
            self.estimated += 1
        start, shares = self.fit(request, t_estimate)
        self.reserve(request, start, shares)
        if jobid is not None:
            self.starts[jobid] = start

    def start_of(self, jobid):
        """The Estimate of a job pending here, where the plan put it
        among the others (None: not planned, e.g. past MAX_PLANNED)."""
        start = self.starts.get(jobid)
        if start is None:
            return None
        return Estimate(start, self.now, None, self.basis())

    def estimate(self, request):
        """The new job's Estimate, with the plan's basis."""
        start, shares = self.fit(request)
        idle = sum(node.idle_at(start) - cores for node, cores, _ in shares) if shares else None
        return Estimate(start, self.now, idle, self.basis()), (start, shares)

    def basis(self):
        parts = [f"{self.policy} plan of {self.planned} pending"]
        if self.estimated:
            parts.append(f"{self.estimated} at sched.t_estimate")
        if self.unlimited:
            parts.append(f"{self.unlimited} without a time limit")
        if self.unplanned:
            parts.append(f"{self.unplanned} more not planned: a lower bound")
        if self.pooled:
            parts.append("nodes pooled")
        return ", ".join(parts)


def node_room(node, start, end):
    """Cores and gpus free on node over all of [start, end)."""
    i = max(0, bisect.bisect_right(node.times, start) - 1)
    used_cores = used_gpus = 0
    while i < len(node.times) and node.times[i] < end:
        used_cores = max(used_cores, node.used_cores[i])
        used_gpus = max(used_gpus, node.used_gpus[i])
        i += 1
    return max(0, node.cores - used_cores), max(0, node.gpus - used_gpus)


# -- From a target's answers --------------------------------------------------

#: What job-list is asked of each active job.
JOB_ATTRS = (
    "state",
    "priority",
    "t_submit",
    "ncores",
    "nnodes",
    "ranks",
    "duration",
    "expiration",
    "annotations",
)


def nodes_of(status):
    """[(rank, cores, gpus)] of the up nodes of a resource.sched-status
    answer ({all: R, down: R, ...}).  ValueError if it is not one."""
    down = set()
    for entry in ((status.get("down") or {}).get("execution") or {}).get("R_lite") or []:
        down.update(idset(entry["rank"]))
    nodes = {}
    for entry in status["all"]["execution"]["R_lite"]:
        children = entry.get("children") or {}
        cores = len(idset(children.get("core", "")))
        gpus = len(idset(children.get("gpu", "")))
        for rank in idset(entry["rank"]):
            if rank not in down:
                nodes[rank] = (rank, cores, gpus)
    return [nodes[r] for r in sorted(nodes)]


def number(value, default=0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return value


def queue_policy(params, queue=None):
    """The queue policy of a sched-fluxion-qmanager.params answer (a queue's
    own, else the instance's; Fluxion's default, fcfs, when unset)."""
    params = (params or {}).get("params") or {}
    own = params.get(queue) if queue else None
    policy = (own or {}).get("queue-policy") if isinstance(own, dict) else None
    policy = policy or params.get("queue-policy") or "fcfs"
    return policy if isinstance(policy, str) else "fcfs"


def build_plan(status, jobs, policy, now, extra_pending=()):
    """The Plan of a target from its answers: resource.sched-status, the
    active jobs job-list listed (running and pending, pending in priority
    order), its queue policy, and pending jobs it may not list yet
    ((Request, id or None) this instance sent it a moment ago).
    ValueError for answers of the wrong shape."""
    plan = Plan(nodes_of(status), now, policy)
    pending = []
    for job in jobs:
        if not isinstance(job, dict):
            raise ValueError("a job that is not a table")
        state = job.get("state")
        cores = int(number(job.get("ncores"), 0))
        if state == 16:  # FLUX_JOB_STATE_RUN
            ranks = idset(job.get("ranks") or "")
            plan.hold_running(ranks, cores, 0, number(job.get("expiration"), 0))
        elif state in (4, 8):  # PRIORITY, SCHED
            nnodes = int(number(job.get("nnodes"), 0)) or None
            request = Request(
                cores=-(-cores // (nnodes or 1)),
                nnodes=nnodes,
                duration=number(job.get("duration"), 0) or INF,
            )
            sched = (job.get("annotations") or {}).get("sched") or {}
            estimate = number(sched.get("t_estimate"), 0) if isinstance(sched, dict) else 0
            key = (-number(job.get("priority"), 0), number(job.get("t_submit"), 0))
            jobid = job.get("id") if isinstance(job.get("id"), int) else None
            pending.append((key, request, estimate or None, jobid))
    pending.sort(key=lambda p: p[0])
    for _, request, estimate, jobid in pending:
        plan.add_pending(request, estimate, jobid)
    for request, jobid in extra_pending:
        plan.add_pending(request, jobid=jobid)
    return plan
