"""Policies: the candidates a job may go to, the built-in orders, and site
policies (module:function, loaded from the broker config).
"""

import importlib
import sys

try:
    from flux.importer import import_path
except ImportError:  # pragma: no cover - unit tests without flux-core
    import importlib.util
    import os

    def import_path(file_path):
        """flux.importer.import_path, as flux-core has it (its quirk too)."""
        module_name = os.path.basename(file_path).rstrip(".py")
        spec = importlib.util.spec_from_file_location(module_name, file_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


from .names import DEFAULT_POLICY
from .registry import parse_registry


def parse_policy_config(conf):
    """The broker config's registry ('delegate') and [delegate-policy]
    table: (clusters, {name: site policy}, default policy).  Raises
    ValueError naming what is wrong."""
    clusters = parse_registry(conf.get("delegate"), "config", "broker config")
    table = conf.get("delegate-policy") or {}
    if not isinstance(table, dict):
        raise ValueError("broker config: [delegate-policy] must be a table")
    unknown = set(table) - {"default", "custom", "include-local"} - set(MOVE_DEFAULTS)
    if unknown:
        raise ValueError(f"broker config: [delegate-policy] has unknown keys: {sorted(unknown)}")
    specs = table.get("custom") or {}
    if not isinstance(specs, dict):
        raise ValueError(
            'broker config: [delegate-policy.custom] must be a table of name = "module:function"'
        )
    custom = {}
    loaded = {}  # each module once per configuration: its policies share it
    for name, spec in specs.items():
        if name in BUILTIN_ORDERS:
            raise ValueError(f"[delegate-policy.custom]: '{name}' is a built-in policy")
        custom[name] = load_policy(name, spec, loaded)
    default = table.get("default", DEFAULT_POLICY)
    if not isinstance(default, str) or default.partition(":")[0] not in (
        set(BUILTIN_ORDERS) | set(custom)
    ):
        raise ValueError(f"[delegate-policy]: unknown default policy '{default}'")
    clash = {c.label for c in clusters if c.label} & set(custom)
    if clash:
        raise ValueError(f"broker config: labels {sorted(clash)} are policy names")
    return clusters, custom, default


def include_local_of(conf):
    """[delegate-policy] include-local: whether this instance competes
    with the targets a policy chooses among (a bool; default false)."""
    value = (conf.get("delegate-policy") or {}).get("include-local", False)
    if not isinstance(value, bool):
        raise ValueError(
            f"[delegate-policy]: include-local must be true or false, not {value!r}"
        )
    return value


#: [delegate-policy] keys of moving a pending job (jobmanager/move.py),
#: with their defaults: moved when another candidate would start it more
#: than move-margin seconds sooner (0: never moved), at most move-max
#: times, looked at every move-interval seconds.
MOVE_DEFAULTS = {"move-margin": 60.0, "move-max": 1, "move-interval": 30.0}


class MoveSettings:
    """[delegate-policy] move-margin, move-max and move-interval, checked."""

    def __init__(self, margin, most, interval):
        self.margin = margin
        self.most = most
        self.interval = interval

    @property
    def on(self):
        return self.margin > 0 and self.most > 0


def move_settings_of(conf):
    """The MoveSettings of the broker config's [delegate-policy] table.
    A duration is seconds or a Flux Standard Duration ("1m"), as the
    plugin's own options; ValueError naming the key for anything else."""
    from .options import duration  # pylint: disable=import-outside-toplevel

    table = conf.get("delegate-policy") or {}
    values = {}
    for key, default in MOVE_DEFAULTS.items():
        value = table.get(key, default)
        if key == "move-max":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"[delegate-policy]: move-max must be a whole number, 0 or more, not {value!r}"
                )
            values[key] = value
            continue
        try:
            values[key] = duration(key, value)
        except ValueError as exc:
            raise ValueError(
                f"[delegate-policy]: {str(exc).replace('plugin option ', '')}"
            ) from None
    return MoveSettings(values["move-margin"], values["move-max"], values["move-interval"])


def job_include_local(jobspec, default):
    """The job's -S delegate-local=true|false (attributes.system), else
    default.  ValueError for any other value: the submit is rejected."""
    value = ((jobspec.get("attributes") or {}).get("system") or {}).get("delegate-local")
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, (str, int)) and str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"-S delegate-local={value!r}: must be true or false")


class Candidate:
    """A target considered for one job, with what the pre-flight learned.

    verdict: "feasible" (its scheduler says it could run the job),
    "unknown" (no feasibility service there: ENOSYS), "infeasible",
    "unreachable" (no connection or no answer in time), or None before the
    pre-flight.  pending: jobs pending there (job-list), match_time:
    Fluxion's longest match time in seconds; estimate: seconds from now
    until the job would start there (flux_delegate.estimate), with what it
    was based on (basis) and the cores it would leave idle; None where not
    known.  plan: the target's estimate.Plan the estimate came from.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self.verdict = None
        self.reason = None
        self.pending = None
        self.match_time = None
        self.estimate = None
        self.basis = None
        self.idle = None
        self.plan = None
        self.schedule = None  # the jobmanager.schedule.TargetSchedule of plan
        self.remote = None

    @property
    def local(self):
        """Whether this candidate is the instance the job was submitted to."""
        return self.cluster.origin == "local"

    label = property(lambda self: self.cluster.label)
    uri = property(lambda self: self.cluster.uri)
    name = property(lambda self: self.cluster.name)

    def describe(self):
        return self.cluster.describe()

    @property
    def usable(self):
        return self.verdict in ("feasible", "unknown")

    def record(self):
        """For the provenance event."""
        record = {"uri": self.uri, "verdict": self.verdict}
        for key in ("label", "reason", "pending", "match_time", "estimate", "basis"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        return record

    def __repr__(self):
        return f"Candidate({self.name!r}, {self.verdict!r})"


class PolicyError(Exception):
    """A policy cannot choose (e.g. assign:N out of range): the job fails
    with DelegationFailure and this message."""


class JobView:
    """What a policy sees of the job."""

    def __init__(self, jobid, userid, jobspec):
        self.id = jobid
        self.userid = userid
        self.jobspec = jobspec
        self.attributes = jobspec.get("attributes", {})


def no_argument(name, arg):
    if arg is not None:
        raise PolicyError(f"{name}: takes no argument (got '{arg}')")


def order_random(job, candidates, arg=None):
    """Any order: spread jobs over targets."""
    no_argument("random", arg)
    import random

    return random.sample(candidates, len(candidates))


def order_least_pending(job, candidates, arg=None):
    """Fewest pending jobs first (job-list's count of jobs in DEPEND,
    PRIORITY and SCHED); ties keep registry order, unknown counts last."""
    no_argument("least_pending", arg)
    return sorted(candidates, key=lambda c: (c.pending is None, c.pending or 0))


def order_shortest_match(job, candidates, arg=None):
    """Shortest Fluxion match time first (sched-fluxion-resource.stats-get,
    the longest successful match, as the C delegate plugin compares it).
    Targets that run no Fluxion are not candidates."""
    no_argument("shortest_match", arg)
    fluxion = [c for c in candidates if c.match_time is not None]
    if not fluxion and candidates:
        raise PolicyError(
            "shortest_match: no target runs Fluxion: "
            + "; ".join(f"{c.describe()}: {c.reason or 'no match statistics'}" for c in candidates)
        )
    return sorted(fluxion, key=lambda c: c.match_time)


def order_earliest_start(job, candidates, arg=None):
    """Earliest estimated start first (flux_delegate.estimate: each
    target's plan, with the jobs sent there counted in); ties by fewer
    cores left idle, then registry order.  Candidates whose start is not
    known come after, by fewest pending jobs."""
    no_argument("earliest_start", arg)

    def key(c):
        if c.estimate is None:
            return (1, c.pending is None, c.pending or 0, 0)
        return (0, c.estimate, c.idle if c.idle is not None else 0, 0)

    return sorted(candidates, key=key)


def order_assign(job, candidates, arg=None):
    """assign:N: the N-th [[delegate]] entry of the broker config, counted
    from 0 as the C delegate plugin does (assign alone is assign:0).  If it
    fails, the entries after it are tried in order."""
    entries = sorted(
        (c for c in candidates if c.cluster.origin == "config"),
        key=lambda c: c.cluster.index,
    )
    try:
        index = int(arg) if arg is not None else 0
        if index < 0:
            raise ValueError
    except ValueError:
        raise PolicyError(f"assign: '{arg}' is not a number (assign:N, N counts from 0)")
    if index >= len(entries):
        raise PolicyError(
            f"assign: sub-instance ID {index} out of range"
            + (f" (0..{len(entries) - 1})" if entries else " (no [[delegate]] entries)")
        )
    return entries[index:]


BUILTIN_ORDERS = {
    "random": order_random,
    "least_pending": order_least_pending,
    "shortest_match": order_shortest_match,
    "assign": order_assign,
    "earliest_start": order_earliest_start,
}


#: What each built-in policy needs to know about the candidates.
POLICY_METRICS = {
    "random": (),
    "least_pending": ("pending",),
    "shortest_match": ("match_time",),
    "assign": (),
    "earliest_start": ("estimate", "pending"),
}


#: Modules a 'module:function' policy may name that load_policy does not
#: import afresh: the handler (delegate_handler: the shim imported it from
#: its file, and does again when the plugin is loaded again), this package
#: (the same), flux-core's bindings, and the standard library.
SHARED_MODULES = frozenset(("delegate_handler", "flux_delegate", "flux", "_flux"))


def import_policy_module(module_name):
    """The module of a site policy, read afresh (an edited policy is read
    again on 'flux config reload'): a file by flux.importer.import_path,
    or a module on sys.path, dropped from sys.modules first unless it is
    one of SHARED_MODULES."""
    if module_name.endswith(".py") or "/" in module_name:
        # import_path never puts the module in sys.modules: each load is a
        # new module object, and two files of one name never meet.  It
        # names the module after its file with rstrip(".py"), a quirk of
        # flux-core's (site_policy.py becomes 'site_polic'): that matters
        # only to what looks a module up by its __name__ (pickle,
        # dataclasses), where a file named like a loaded module (json.py)
        # would find that one.
        return import_path(module_name)
    top = module_name.partition(".")[0]
    if top not in SHARED_MODULES and top not in sys.stdlib_module_names:
        sys.modules.pop(module_name, None)
        importlib.invalidate_caches()  # a module file new since the last look
    return importlib.import_module(module_name)


def load_policy(name, spec, loaded=None):
    """A site policy from 'module:function' (a module on sys.path, or
    delegate_handler for a function of the handler itself) or
    '/path/to/file.py:function', its module read afresh (see
    import_policy_module).  loaded ({module: module object}, one for each
    configuration read) keeps the policies of one configuration that name
    one module on one module object.  Raises ValueError."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"policy '{name}': '{spec}' is not 'module:function'")
    module_name, _, function = spec.rpartition(":")
    loaded = {} if loaded is None else loaded
    try:
        module = loaded.get(module_name) or import_policy_module(module_name)
    except Exception as exc:  # pylint: disable=broad-except
        raise ValueError(f"policy '{name}': cannot import {module_name}: {exc}")
    loaded[module_name] = module
    order = getattr(module, function, None)
    if not callable(order):
        raise ValueError(f"policy '{name}': {module_name} has no function '{function}'")
    import inspect

    try:
        takes_arg = len(inspect.signature(order).parameters) >= 3
    except (TypeError, ValueError):
        takes_arg = True
    if takes_arg:
        return order
    return lambda job, candidates, arg=None: order(job, candidates)


def apply_policy(order, name, arg, job, candidates):
    """Run a policy and check what it returns: some of the candidates,
    each at most once."""
    try:
        result = list(order(job, list(candidates), arg))
    except PolicyError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise PolicyError(f"policy {name} failed: {type(exc).__name__}: {exc}") from exc
    ids = {id(c) for c in candidates}
    seen = set()
    for item in result:
        if id(item) not in ids or id(item) in seen:
            raise PolicyError(
                f"policy {name} returned {item!r}, which is not one of its candidates"
            )
        seen.add(id(item))
    return result


def no_target_message(candidates, order):
    """Why no candidate can take the job, naming each one."""
    if not candidates:
        return "no targets in the registry (it changed since the job was submitted)"
    if len(candidates) == 1:
        c = candidates[0]
        if c.verdict == "unreachable" and c.remote is not None:
            return f"{c.uri} did not answer: {c.reason}"
        if c.verdict == "unreachable":
            return f"cannot connect to {c.uri}: {c.reason}"
        if c.verdict == "infeasible":
            return f"{c.describe()} cannot run this job: {c.reason}"
    listed = {id(c) for c in order}
    reasons = []
    for c in candidates:
        if c.usable and id(c) not in listed:
            why = "not chosen by the policy"
        else:
            why = f"{c.verdict}: {c.reason}" if c.reason else c.verdict
        reasons.append(f"{c.describe()}: {why}")
    return "no target can run this job: " + "; ".join(reasons)
