"""The pre-flight: what a candidate target is asked before a job is sent to
it (the resources and limits of the job, never its environment).
"""

from .jobspec import lookup

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
