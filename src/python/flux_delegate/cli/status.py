"""What 'flux remote list' and 'flux remote show' ask each target, and the
status they show: reachable or not (and why), its scheduler, resources
free and in all, jobs pending and running, and whether it answers
feasibility checks (the pre-flight's question).
"""

import errno

from flux.job import JobspecV1
from flux.resource import resource_list

from ..preflight import QUESTIONS, feasibility_jobspec
from ..text import brief

#: A one-core job, to see whether a target answers feasibility checks at all.
PROBE_JOBSPEC = feasibility_jobspec(JobspecV1.from_command(["true"]).jobspec)


def status_questions():
    """{name: send(handle) -> future}: what a target's status needs."""
    return {
        "modules": lambda h: h.rpc("module.list", nodeid=0),
        "resources": resource_list,
        "jobs": lambda h: h.rpc(QUESTIONS["pending"], {}, nodeid=0),
        "feasibility": lambda h: h.rpc(
            QUESTIONS["feasibility"], {"jobspec": PROBE_JOBSPEC}, nodeid=0
        ),
        "version": lambda h: h.rpc("attr.get", {"name": "version"}, nodeid=0),
    }


def scheduler_name(modules):
    """'fluxion', 'sched-simple', another scheduler module's name, or
    'none', from module.list: the module that provides the 'sched'
    service."""
    for module in modules.get("mods", []):
        if "sched" in (module.get("services") or []):
            name = module.get("name") or "?"
            return "fluxion" if name.startswith("sched-fluxion") else name
    return "none"


def counts(rset):
    """(nodes, cores, gpus) of a ResourceSet."""
    return rset.nnodes, rset.ncores, rset.ngpus


class Status:
    """A registry entry with what its target answered.  Values that are
    not known are None."""

    FIELDS = (
        "label", "uri", "origin", "file", "extra", "state", "reason", "scheduler",
        "version", "nodes", "cores", "gpus", "pending", "running", "feasibility",
    )

    def __init__(self, cluster, file=None):
        self.cluster = cluster
        self.label = cluster.label
        self.uri = cluster.uri
        self.origin = cluster.origin
        self.file = file if cluster.origin == "user" else None
        self.extra = dict(cluster.extra)
        self.state = None  # "up" or "unreachable"; None: not asked
        self.reason = None
        self.scheduler = None
        self.version = None
        self.nodes = self.cores = self.gpus = None  # {"free": n, "total": n}
        self.pending = None
        self.running = None
        self.feasibility = None  # True, False (no service), None (unknown)

    def record(self, probe, timeout, this_instance=False):
        """Fill in from a cli.probe.Probe."""
        if not probe.connected:
            self.state, self.reason = "unreachable", probe.error
            return
        answered = [n for n in probe.questions if n in probe.answers or n in probe.errors]
        if not answered:
            self.state = "unreachable"
            self.reason = (
                f"connected, but it answered nothing within {timeout:g}s"
                " (stopped, hung or overloaded)"
            )
            if probe.unsent:
                self.reason = "connected, but the connection broke: " + "; ".join(
                    sorted({e.strerror or str(e) for e in probe.unsent.values()})
                )
            return
        self.state = "up"
        problems = []
        modules, error = probe.answer("modules") or (None, None)
        if modules is not None:
            self.scheduler = scheduler_name(modules)
        resources, error = probe.answer("resources") or (None, None)
        if resources is not None:
            try:
                total = counts(resources.all)
                free = counts(resources.free)
                self.nodes, self.cores, self.gpus = (
                    {"free": f, "total": t} for f, t in zip(free, total)
                )
            except Exception as exc:  # pylint: disable=broad-except
                problems.append(f"resources: {exc}")
        elif error is not None:
            problems.append(f"resources: {error.strerror or error}")
        jobs, error = probe.answer("jobs") or (None, None)
        if jobs is not None:
            states = jobs.get("job_states", {})
            self.pending = sum(int(states.get(k, 0)) for k in ("depend", "priority", "sched"))
            self.running = sum(int(states.get(k, 0)) for k in ("run", "cleanup"))
        elif error is not None:
            problems.append(f"jobs: {error.strerror or error}")
        answer = probe.answer("feasibility")
        if answer is not None:
            error = answer[1]
            self.feasibility = error is None or error.errno != errno.ENOSYS
        version, _ = probe.answer("version") or (None, None)
        if version is not None:
            self.version = version.get("value")
        late = sorted(n for n in probe.outstanding)
        if late:
            problems.append(f"no answer within {timeout:g}s to {', '.join(late)}")
        if this_instance:
            problems.insert(0, "this instance itself: jobs are never delegated to it")
        self.reason = brief("; ".join(problems)) if problems else None

    def as_dict(self):
        return {key: getattr(self, key) for key in self.FIELDS}
