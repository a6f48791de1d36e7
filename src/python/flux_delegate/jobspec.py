"""Jobspec rewrites: the remote copy of a local job, its origin record, and
the updates that release the local job once its remote twin has ended.
"""

import copy
import os
import time

try:
    from flux.util import get_treedict, set_treedict
except ImportError:  # pragma: no cover - unit tests without flux-core
    # flux.util's two, as it has them, only so that this module imports
    # without flux-core's bindings: the job-manager always has flux's.

    def get_treedict(in_dict, key, default=None):
        *levels, last = key.split(".")
        for level in levels:
            try:
                in_dict = in_dict[level]
            except KeyError:
                return default
        return in_dict.get(last, default)

    def set_treedict(in_dict, key, val):
        *levels, last = key.split(".")
        for level in levels:
            in_dict = in_dict.setdefault(level, {})
        in_dict[last] = val


from .names import LOCAL_ONLY_ATTRIBUTES, ORIGIN_ATTRIBUTE, RELEASE_ATTRIBUTE

#: How long the released local job would "run" in job-exec, should job-exec
#: ever be asked to start it (the plugin runs it itself: localrun.py).
RELEASE_RUN_DURATION = "0.01s"


def lookup(jobspec, path, default=None):
    """The value at a dotted path of a jobspec ("attributes.system.job.name",
    flux.util.get_treedict), or default where it is missing or where a
    level on the way is not a table (a target's jobspec, or a user's
    attribute, can be any JSON)."""
    try:
        return get_treedict(jobspec, path, default)
    except (AttributeError, TypeError):
        return default


def remote_jobspec(jobspec, environment=None, origin=None):
    """The jobspec to submit remotely: the local one without what only
    means something here (dependencies, delegation attributes), with the
    environment put back (the job-manager keeps jobspecs without it) and
    the origin (the local job) recorded.  Its top level, "attributes" and
    "attributes.system" are new tables; the others (resources, tasks,
    attributes.user...) are the given jobspec's own: change those on a
    copy."""
    attributes = jobspec.get("attributes")
    system = attributes.get("system") if isinstance(attributes, dict) else None
    if not isinstance(system, dict):
        spec = copy.deepcopy(jobspec)  # no tables to copy along (not flux's)
        system = get_treedict(spec, "attributes.system") or {}
        set_treedict(spec, "attributes.system", system)
    else:
        # New tables down to attributes.system, the rest shared with the
        # local jobspec: nothing here changes it, and a copy of a large
        # jobspec (files, a long command) would cost every job.
        spec = dict(jobspec, attributes=dict(attributes))
    system = {k: v for k, v in system.items() if k not in LOCAL_ONLY_ATTRIBUTES}
    if environment is not None:
        system["environment"] = environment
    if origin is not None:
        system[ORIGIN_ATTRIBUTE] = origin
    spec["attributes"]["system"] = system
    return spec


def with_output_batch_timeout(remote, seconds):
    """remote (a remote jobspec) with its shell's output.batch-timeout set
    to seconds, unless the job sets its own (-o output.batch-timeout=):
    how long the flux shell gathers output before it commits it (0.5 s by
    default), most of what a line takes to reach an attach.  A new jobspec
    where it sets it: the tables on the way are copied, not changed (a
    site's remote_jobspec may share them with the local jobspec); remote
    itself where a table on the way is not one (not flux's: left alone)."""
    path = ("attributes", "system", "shell", "options", "output")
    tables = [remote]
    for key in path:
        table = tables[-1].get(key, {})
        if not isinstance(table, dict):
            return remote
        tables.append(table)
    if "batch-timeout" in tables[-1]:
        return remote
    new = dict(tables[-1], **{"batch-timeout": seconds})
    for key, table in zip(reversed(path), reversed(tables[:-1])):
        new = dict(table, **{key: new})
    return new


def requeue_allowed(jobspec):
    """Whether a job that started remotely may run again elsewhere after an
    allocation failure: yes, unless -S delegate-requeue=false (or 0, no)."""
    value = lookup(jobspec, "attributes.system.delegate-requeue", True)
    return value not in (False, 0, "false", "False", "no", "0")


def delegation_is_only_dependency(jobspec):
    """Whether the job's jobspec asks for no dependency but its delegation
    (at most one delegate: entry, as -S system.delegate asks for none).
    flux's dependency schemes (after*, begin-time, singleton) are all
    listed here."""
    dependencies = lookup(jobspec, "attributes.system.dependencies", [])
    if not isinstance(dependencies, list):
        return False
    return all(isinstance(d, dict) and d.get("scheme") == "delegate" for d in dependencies) and (
        len(dependencies) <= 1
    )


def origin_of(jobspec):
    """The origin a remote jobspec records, or None."""
    origin = lookup(jobspec, f"attributes.system.{ORIGIN_ATTRIBUTE}")
    return origin if isinstance(origin, dict) else None


def same_origin(a, b):
    """Whether two origins name the same local job (its id, and its submit
    time: ids alone repeat across instances)."""
    try:
        return int(a["jobid"]) == int(b["jobid"]) and (
            abs(float(a["t_submit"]) - float(b["t_submit"])) < 1e-3
        )
    except (KeyError, TypeError, ValueError, OverflowError):  # a target's origin may be anything
        return False


def job_name(jobspec):
    """The job's name as job-list shows it: attributes.system.job.name, or
    the base name of the command; None if neither."""
    name = lookup(jobspec, "attributes.system.job.name")
    if isinstance(name, str) and name:
        return name
    try:  # tasks is a list: no dotted path reaches into it
        command = jobspec["tasks"][0]["command"]
        return os.path.basename(command[0]) or command[0]
    except (KeyError, IndexError, TypeError):
        return None


def release_updates(wait_status):
    """Jobspec updates of the released local job: the wait status it ends
    with (RELEASE_ATTRIBUTE: a plugin loaded again while a prolog holds its
    run reads it there, localrun.py) and, should job-exec ever be asked to
    start it, test exec mode: no process runs, the job finishes at once
    with that status, and so does one job-exec finds at a restart
    (reattach_finish).  Nothing the job asked for runs twice."""
    wait_status = int(wait_status)
    return {
        "attributes.system.exec.test": {
            "run_duration": RELEASE_RUN_DURATION,
            "wait_status": wait_status,
            "reattach_finish": 1,
        },
        f"attributes.system.{RELEASE_ATTRIBUTE}": {"wait_status": wait_status},
    }


#: The wait status job-exec would give a job released while its remote job
#: runs (running_updates), should it ever be asked to start it: a failure,
#: never a false success, and still nothing runs here (test exec mode).
RUNNING_RELEASE_WAIT_STATUS = 1 << 8


def running_updates(annotation):
    """Jobspec updates of a local job released as its remote job started
    (starting.py), whose end is not known yet: RELEASE_ATTRIBUTE says so
    ({"running": true}: a plugin loaded again follows its remote job again,
    resuming.py) and keeps what 'flux jobs' shows of the remote job (the
    annotation, given back at a restart, which forgets annotations); and
    test exec mode as in release_updates().  A job in RUN takes no jobspec
    update: these are its last."""
    release = {"running": True}
    if annotation is not None:
        release["annotation"] = annotation
    return {
        "attributes.system.exec.test": {
            "run_duration": RELEASE_RUN_DURATION,
            "wait_status": RUNNING_RELEASE_WAIT_STATUS,
            "reattach_finish": 1,
        },
        f"attributes.system.{RELEASE_ATTRIBUTE}": release,
    }


def released_running(jobspec):
    """(Whether the job was released by this plugin while its remote job
    ran, the annotation kept then or None): running_updates()."""
    release = lookup(jobspec, f"attributes.system.{RELEASE_ATTRIBUTE}")
    if not isinstance(release, dict) or release.get("running") is not True:
        return False, None
    annotation = release.get("annotation")
    return True, annotation if isinstance(annotation, dict) else None


def released_status(jobspec):
    """The wait status a released job finishes with (RELEASE_ATTRIBUTE),
    or None if the job was not released by this plugin."""
    release = lookup(jobspec, f"attributes.system.{RELEASE_ATTRIBUTE}")
    status = release.get("wait_status") if isinstance(release, dict) else None
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    return None


def local_R(hostname, now=None):
    """A minimal R (RFC 20) for the released local job: one core of rank 0.
    It is never allocated from the scheduler (alloc-bypass)."""
    return {
        "version": 1,
        "execution": {
            "R_lite": [{"rank": "0", "children": {"core": "0"}}],
            "nodelist": [hostname],
            "starttime": float(now if now is not None else time.time()),
            "expiration": 0.0,
        },
    }


#: The most ranks (and, on each, resources of a kind) a remote R may name
#: to be taken for the local job's: parsing a larger one would hold up the
#: job-manager.
MAX_R_IDS = 1 << 16


def idset_ids(text, limit=MAX_R_IDS):
    """The ids an RFC 22 idset string names ("0-3,7", "[2-5]"), in order,
    counted before they are expanded; None if it is not one, or names more
    than limit."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ranges = []
    total = 0
    for part in text.split(","):
        low, dash, high = part.partition("-")
        high = high if dash else low
        if not (low.isascii() and low.isdigit() and high.isascii() and high.isdigit()):
            return None
        if int(high) < int(low):
            return None
        total += int(high) - int(low) + 1
        if total > limit:
            return None
        ranges.append((int(low), int(high)))
    return sorted({i for low, high in ranges for i in range(low, high + 1)})


def idset_count(text, limit=MAX_R_IDS):
    """How many ids an RFC 22 idset string names, or None (idset_ids)."""
    ids = idset_ids(text, limit)
    return None if ids is None else len(ids)


def idset_text(ids):
    """An RFC 22 idset string of sorted ids: "0-3,7"."""
    parts = []
    for i in ids:
        if parts and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def R_lite_entries(R_lite):
    """[(ranks, children)] of an R_lite list, or None if it is not one of
    at most MAX_R_IDS ranks, each entry's ranks and children idsets."""
    if not isinstance(R_lite, list) or not R_lite:
        return None
    entries = []
    total = 0
    for entry in R_lite:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("children"), dict)
            and all(
                isinstance(k, str) and idset_count(v) is not None
                for k, v in entry["children"].items()
            )
        ):
            return None
        ranks = idset_ids(entry.get("rank"))
        if not ranks:
            return None
        total += len(ranks)
        if total > MAX_R_IDS:
            return None
        entries.append((ranks, dict(entry["children"])))
    return entries


def R_naming(remote_R, now=None, count=None, max_nodes=None):
    """The released local job's R, naming where its remote job ran: the
    remote R's nodes (nodelist) and what it had on each (cores, gpus), so
    that 'flux jobs -o {nodelist}' (and nnodes, ncores) show the remote
    job's.  Never allocated from the scheduler (alloc-bypass), and no
    process runs on it (exec test mode).

    Its ranks are 0 to N-1 (for N nodes, in the remote ranks' order): the
    target's ranks mean nothing here, and a job on one node gets rank 0,
    as a released job always had (a job prolog or epilog of this instance,
    which runs on a job's ranks, runs where it ran before).  max_nodes:
    None for a job on more nodes than that (see Runtime.max_named_nodes).

    None if remote_R is not an R of that shape: RFC 20 version 1, at most
    MAX_R_IDS ranks, each once, and a nodelist naming as many nodes as
    R_lite has ranks; count(R) -> (hosts, ranks) counts them, where flux's
    bindings can (flux_counts)."""
    if not isinstance(remote_R, dict) or remote_R.get("version") != 1:
        return None
    execution = remote_R.get("execution")
    if not isinstance(execution, dict):
        return None
    nodelist = execution.get("nodelist")
    entries = R_lite_entries(execution.get("R_lite"))
    if entries is None or not isinstance(nodelist, list) or not nodelist:
        return None
    total = sum(len(ranks) for ranks, _ in entries)
    remote_ranks = sorted({r for ranks, _ in entries for r in ranks})
    if len(remote_ranks) != total:
        return None  # a rank named twice
    if max_nodes is not None and total > max_nodes:
        return None
    if not all(isinstance(host, str) and host and "\0" not in host for host in nodelist):
        return None
    local = {rank: i for i, rank in enumerate(remote_ranks)}
    R = {
        "version": 1,
        "execution": {
            "R_lite": [
                {"rank": idset_text([local[r] for r in ranks]), "children": children}
                for ranks, children in entries
            ],
            "nodelist": list(nodelist),
            "starttime": float(now if now is not None else time.time()),
            "expiration": 0.0,
        },
    }
    if count is not None:
        try:
            hosts, nranks = count(R)
        except Exception:  # pylint: disable=broad-except
            return None
        if hosts != nranks or nranks != total:
            return None
    return R


def max_named_nodes(broker_conf):
    """How many remote nodes a released job's R may name (R_naming's
    max_nodes): 1 where the instance runs a job prolog or epilog on each of
    a job's ranks ([job-manager.prolog] or [job-manager.epilog] with
    per-rank = true: ranks 1 to N-1 here would be nodes that ran nothing
    of the job), else any (None)."""
    manager = broker_conf.get("job-manager") if isinstance(broker_conf, dict) else None
    if not isinstance(manager, dict):
        return None
    for name in ("prolog", "epilog"):
        table = manager.get(name)
        if isinstance(table, dict) and table.get("per-rank") is True:
            return 1
    return None


def flux_counts(R):
    """(hosts, ranks) of an R as flux reads it (flux.resource.ResourceSet,
    which also checks that it parses); for R_naming(count=)."""
    from flux.hostlist import Hostlist
    from flux.resource import ResourceSet

    ranks = ResourceSet(R).nnodes
    return len(Hostlist(R["execution"]["nodelist"])), ranks
