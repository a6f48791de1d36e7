"""flux-delegate handler: send a job to another Flux instance and mirror it.

delegate.so (the jobtap shim) embeds Python in the job-manager and calls
three functions of this file:

    plugin_load(conf)            when the plugin is loaded (conf: its KEY=VALUE
                                 arguments, e.g. {"handler": "/path"})
    plugin_unload()              on 'flux jobtap remove delegate.so'
    callback(topic, args, job)   for jobtap callbacks: job.dependency.delegate
                                 for every job that asks for delegation, and
                                 job.state.* / job.event.* for jobs this
                                 handler took on (job is then the object it
                                 attached with delegate_jobtap.job_attach)

Everything here runs on the job-manager's own thread and reactor, so
nothing may block: remote work is done with futures and continuations
(then()), never future.get() on a future that is not yet fulfilled.  A
Python exception never reaches the broker: in a callback delegate.so turns
it into a rejected submit or a DelegationFailure exception; in a
continuation then() below does the same through
delegate_jobtap.report_exception().

The life of a delegated job (local job id L, remote job id R):

  submit      job.dependency.delegate: the value is checked (a bad one is
              rejected), the job is held with dependency "delegated".
  wait        other dependencies (afterok:...) are honoured: the handler
              reads the job's eventlog from the job-manager and waits until
              "delegated" is the only dependency left.
  submit R    the target URI is resolved, the remote instance connected
              (one connection per URI, reused), and the jobspec submitted
              there without the local dependencies and delegation
              attributes, with L recorded in it (system.delegate-origin).
              L gets a "delegated" event {jobid: R, uri}.  If that answer
              is lost (restart or reload mid-submit), the target is
              searched for R by its origin before submitting again.
  follow      R's eventlog is watched.  L stays pending (DEPEND), so a
              restart of this instance neither cancels nor forgets it: on
              reload the "delegated" event is found again and R re-followed.
  end         R failed with an exception: L gets a DelegationFailure
              exception naming R and the exception.
              R finished: L is released and run through to its end without
              resources or processes (alloc-bypass, exec test mode) and
              finishes with R's wait status, so 'flux job status L' gives
              R's exit code.
  cancel      'flux cancel L' cancels R; R canceled in the target ends L
              with DelegationFailure.

Any failure before R exists ends L with a severity 0 DelegationFailure
whose note says what went wrong and with which URI.
"""

import collections
import copy
import errno
import fcntl
import gc
import importlib
import json
import os
import queue
import signal
import socket
import stat
import struct
import syslog
import termios
import threading
import time
import urllib.parse
import weakref

try:
    import flux
    import flux.constants
    import flux.core.handle
    import flux.job
    import flux.kvs
    import flux.uri
    from flux.constants import FLUX_POLLERR, FLUX_POLLIN, FLUX_POLLOUT
    from flux.core.inner import ffi, lib, raw
    from flux.job import JobID
except ImportError:  # pragma: no cover
    # Inside the broker flux is always importable.  Outside it (unit tests
    # on a machine without flux-core) the pure decision logic below still
    # imports; whatever needs flux says so when called.
    flux = None

# Set by plugin_load(): the module delegate.so provides.
jobtap = None

#: Description of the dependency that holds a delegated job locally.
DEPENDENCY = "delegated"

#: Job exception type for every delegation failure (the C delegate plugin's).
EXCEPTION_TYPE = "DelegationFailure"

#: Jobspec attributes that belong to the local instance only.
LOCAL_ONLY_ATTRIBUTES = ("dependencies", "delegate", "delegate-origin", "delegate-requeue")

#: The system attribute that names, in a remote job, the local job it runs
#: for: {"jobid", "t_submit", "host"}.  With it a submit whose answer was
#: lost (the source stopped or the plugin was reloaded in between) is found
#: again instead of being made twice.
ORIGIN_ATTRIBUTE = "delegate-origin"

#: Seconds by which a target's clock may lag the source's when looking for
#: a job submitted before an interruption.
CLOCK_SKEW = 600.0

#: Default seconds to wait for a target to answer a submit.
DEFAULT_SUBMIT_TIMEOUT = 30.0

#: Default seconds to wait for a connection to a target (an ssh:// login).
DEFAULT_CONNECT_TIMEOUT = 30.0

#: Default seconds to keep trying to reach a target whose connection broke
#: while it runs a job (it may be restarting) before giving the job up.
DEFAULT_RECONNECT_TIMEOUT = 300.0

#: Default seconds a connected candidate has to answer the pre-flight.
DEFAULT_PREFLIGHT_TIMEOUT = 10.0

#: Plugin options (flux jobtap load delegate.so KEY=VALUE, or conf = {...}
#: in [job-manager] plugins) that are seconds, with their defaults.
SECONDS_OPTIONS = {
    "submit-timeout": DEFAULT_SUBMIT_TIMEOUT,
    "connect-timeout": DEFAULT_CONNECT_TIMEOUT,
    "preflight-timeout": DEFAULT_PREFLIGHT_TIMEOUT,
    "reconnect-timeout": DEFAULT_RECONNECT_TIMEOUT,
    "reconnect-interval": 2.0,
}

#: Plugin options that are paths.
PATH_OPTIONS = ("handler", "registry")

#: How long the local job "runs" once the remote one has finished: only
#: long enough for job-exec to post start and finish (test exec mode).
RELEASE_RUN_DURATION = "0.001s"

#: Why a job is never sent to the instance it was submitted to: it would
#: wait there for itself.
SELF_DELEGATION = "a job is not delegated to the instance it was submitted to"

#: Policies built into this handler (site policies are added by config).
BUILTIN_POLICIES = ("random", "least_pending", "shortest_match", "assign")

#: Policy for --dependency=delegate with no value, unless configured.
DEFAULT_POLICY = "least_pending"


def plugin_options(conf):
    """The plugin's options, checked, with defaults: {key: value}.  Raises
    ValueError naming the option for an unknown key (a typo would silently
    keep a default) or a value that is not a positive number of seconds."""
    options = dict(SECONDS_OPTIONS)
    for key, value in (conf or {}).items():
        if key in PATH_OPTIONS:
            options[key] = value
            continue
        if key not in SECONDS_OPTIONS:
            known = ", ".join(PATH_OPTIONS + tuple(SECONDS_OPTIONS))
            raise ValueError(f"unknown plugin option '{key}' (known: {known})")
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = None
        if isinstance(value, bool) or seconds is None or not 0 < seconds < float("inf"):
            raise ValueError(
                f"plugin option {key}={value}: not a positive number of seconds"
            )
        options[key] = seconds
    return options


USAGE = (
    "use --dependency=delegate:URI with a Flux URI "
    "(local:///path/to/socket, ssh://host/path/to/socket) "
    "or the job id of a Flux instance running as a job here"
)


# ---------------------------------------------------------------------------
# Pure decision logic (no handle, no I/O): unit tested on its own.
# ---------------------------------------------------------------------------


class Target:
    """What a delegate:VALUE dependency (or system.delegate) names, before
    any resolution.

    kind is "uri" (a URI flux_open() takes as it is), "jobid" (a job of
    this instance, or a path of jobs, running a Flux instance), "scheme"
    (another URI scheme, which this handler cannot open), "label" (a
    registry entry: cluster) or "policy" (a policy chooses among the
    registry's entries: policy, with its argument policy_arg).
    """

    def __init__(self, value, kind, scheme=None, jobids=None, cluster=None,
                 policy=None, policy_arg=None):
        self.value = value
        self.kind = kind
        self.scheme = scheme
        self.jobids = jobids or []
        self.cluster = cluster
        self.policy = policy
        self.policy_arg = policy_arg

    def __repr__(self):
        return f"Target({self.value!r}, kind={self.kind!r})"


def shown(value, limit=40, limit_bytes=60):
    """A user's (or a target's) value as a message quotes it: non-strings as
    JSON, control characters escaped, and shortened (to limit characters
    and about limit_bytes of UTF-8), so that the reason around it fits in
    flux's 160 bytes of a rejection."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    cut, size = [], 0
    for c in text[:limit]:
        c = c if c.isprintable() else repr(c)[1:-1]
        size += len(c.encode("utf-8", "backslashreplace"))
        if size > limit_bytes:
            break
        cut.append(c)
    whole = len(cut) == len(text)
    cut = "".join(cut)
    if not whole:
        cut += f"...({len(text)} characters)"
    return f"'{cut}'"


def parse_target(value, registry=None, policies=BUILTIN_POLICIES, default_policy=None):
    """Parse the value of a delegate dependency.

    The value is, in this order: empty (the default policy chooses among
    the registry's entries), a policy name (POLICY or POLICY:ARG), a label
    of the registry, a URI, or a job id.  Raises ValueError for a value that
    is wrong on its face (not any of these): such a submit is rejected.
    Anything that can only be found out by trying (an unknown scheme, a
    socket that is not there, a job that runs no instance, assign:N out of
    range) is left for later, and fails the job instead.
    """
    registry = registry or Registry()
    if value is None or value == "":
        if not registry.clusters:
            raise ValueError(f"no delegation targets are configured: {USAGE}")
        return policy_target(value or "", default_policy or DEFAULT_POLICY)
    if not isinstance(value, str):
        raise ValueError(f"the target must be a string, not {shown(value)}: {USAGE}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"not a target (white space or control characters): {shown(value)}")
    if value.partition(":")[0] in policies:
        if not registry.clusters:
            raise ValueError(
                "no delegation targets are configured for policy"
                f" {shown(value.partition(':')[0])} to choose from"
            )
        return policy_target(value, value)
    cluster = registry.by_label(value)
    if cluster is not None:
        return Target(value, "label", cluster=cluster)
    try:
        scheme = uri_scheme(value)
    except Exception:  # pylint: disable=broad-except
        raise ValueError(f"not a URI: {shown(value)}")
    if scheme == "":
        # A bare job id, as 'flux proxy JOBID' takes it.
        try:
            jobids = parse_jobid_path(value)
        except ValueError:
            raise ValueError(
                f"not a URI, job id, registry label or policy: {shown(value)}"
                f" (labels: {shown(', '.join(registry.labels()) or 'none')};"
                f" policies: {', '.join(policies)})"
            )
        return Target(value, "jobid", "jobid", jobids)
    if scheme in ("local", "ssh"):
        check_local_or_ssh(value)
        return Target(value, "uri", scheme)
    if scheme == "jobid":
        return Target(value, "jobid", scheme)
    if scheme == "pid":
        pid = value.partition(":")[2]
        if not (pid.isascii() and pid.isdigit() and 0 < int(pid) < 2**31):
            raise ValueError(f"pid: needs a process id (pid:PID), not {shown(value)}")
    return Target(value, "scheme", scheme)


def policy_target(value, policy):
    name, _, arg = policy.partition(":")
    return Target(value, "policy", policy=name, policy_arg=arg or None)


def uri_scheme(value):
    """The scheme of a URI, "" if none (flux's own URI parser)."""
    if flux is not None:
        return flux.uri.URIResolverURI(value).scheme.lower()
    head, sep, _ = value.partition(":")
    return head.lower() if sep and head.isalpha() else ""


def parse_jobid_path(path):
    """'ƒA/ƒB' -> [JobID(A), JobID(B)]: a hierarchy of jobs, as jobid: URIs
    take it.  Raises ValueError if any element is not a job id."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise ValueError("no job id")
    if flux is None:
        raise ValueError("job ids need flux's Python bindings")
    jobids = []
    for part in parts:
        try:
            jobids.append(JobID(part))
        except (OSError, ValueError, TypeError, OverflowError):
            raise ValueError(f"not a job id: {shown(part)}")
    return jobids


def check_local_or_ssh(value):
    """Validate a local:// or ssh:// URI; returns it (raises ValueError).
    flux's connectors take the scheme as it is written, in lower case."""
    if not value.startswith(("local://", "ssh://")):
        raise ValueError(f"not a local:// or ssh:// URI: {shown(value)}")
    scheme = value.partition(":")[0]
    try:
        # flux's parser; the standard one where the bindings are missing
        # (unit tests without flux-core): the same for these two schemes.
        uri = flux.uri.JobURI(value) if flux is not None else urllib.parse.urlparse(value)
        host, path = uri.netloc, uri.path
    except Exception:  # pylint: disable=broad-except
        raise ValueError(f"not a URI: {shown(value)}")
    if scheme == "ssh" and not host:
        raise ValueError(f"the URI names no host: {shown(value)}")
    if scheme == "local" and host:
        raise ValueError(f"a local:// URI names no host (local:///path): {shown(value)}")
    if not path or path == "/":
        raise ValueError(f"the URI names no socket path: {shown(value)}")
    return value


# -- The registry: targets known by label ------------------------------------

class Cluster:
    """A registry entry: a target instance, known by its label.

    origin is "config" (the broker's [[delegate]] entries, which assign:N
    indexes in config order) or "user" (the user's registry file).  Keys
    other than uri and label are kept in extra, for site policies.
    """

    def __init__(self, uri, label=None, origin="config", index=None, extra=None):
        self.uri = uri
        self.label = label
        self.origin = origin
        self.index = index
        self.extra = dict(extra or {})

    @property
    def name(self):
        return self.label or self.uri

    def describe(self):
        return f"{self.label} ({self.uri})" if self.label else self.uri

    def __repr__(self):
        return f"Cluster({self.uri!r}, label={self.label!r}, origin={self.origin!r})"


class Registry:
    def __init__(self, clusters=()):
        self.clusters = list(clusters)

    def by_label(self, label):
        for cluster in self.clusters:
            if cluster.label == label:
                return cluster
        return None

    def by_uri(self, uri):
        for cluster in self.clusters:
            if cluster.uri == uri:
                return cluster
        return None

    def labels(self):
        return [c.label for c in self.clusters if c.label]

    def config_entries(self):
        """The broker's [[delegate]] entries, in config order (assign:N)."""
        return [c for c in self.clusters if c.origin == "config"]


def parse_registry(entries, origin, where):
    """Clusters from a 'delegate' value, as the C delegate plugin reads it:
    a list of URI strings (the older form) or of tables with 'uri' and an
    optional 'label'; other keys are kept.  Raises ValueError naming 'where'
    and the entry at fault."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ValueError(
            f"{where}: 'delegate' must be a list of URIs or of tables with"
            " 'uri' and 'label'"
        )
    clusters = []
    seen = {}
    for index, entry in enumerate(entries):
        at = f"{where}: delegate[{index}]"
        if isinstance(entry, str):
            uri, label, extra = entry, None, {}
        elif isinstance(entry, dict):
            extra = dict(entry)
            uri = extra.pop("uri", None)
            label = extra.pop("label", None)
        else:
            raise ValueError(f"{at}: must be a URI or a table with 'uri'")
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError(f"{at}: 'uri' must be a non-empty string")
        if uri_scheme(uri) not in ("local", "ssh"):
            raise ValueError(f"{at}: '{uri}' is not a local:// or ssh:// URI")
        if label is not None:
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"{at}: 'label' must be a non-empty string")
            if any(c.isspace() or c in ":/" for c in label):
                raise ValueError(
                    f"{at}: label '{label}' may not contain white space, ':' or '/'"
                )
            if label in BUILTIN_POLICIES:
                raise ValueError(f"{at}: label '{label}' is the name of a policy")
            if label in seen:
                raise ValueError(
                    f"{at}: label '{label}' is already used by delegate[{seen[label]}]"
                )
            seen[label] = index
        clusters.append(Cluster(uri, label, origin, index, extra))
    return clusters


def merge_registry(config_clusters, user_clusters, policies=()):
    """The broker's entries, then the user's; on a label used by both, the
    broker's wins, and a user label that names a policy is left out.
    Returns (Registry, [notes on dropped user entries])."""
    labels = {c.label for c in config_clusters if c.label}
    notes = []
    merged = list(config_clusters)
    for cluster in user_clusters:
        if cluster.label in labels:
            notes.append(
                f"user registry entry '{cluster.label}' ({cluster.uri}) is"
                " overridden by the broker config's entry of that label"
            )
            continue
        if cluster.label in policies:
            notes.append(
                f"user registry entry '{cluster.label}' ({cluster.uri}) is left"
                " out: its label is the name of a policy"
            )
            continue
        merged.append(cluster)
    return Registry(merged), notes


def parse_policy_config(conf):
    """The broker config's registry ('delegate') and [delegate-policy]
    table: (clusters, {name: site policy}, default policy).  Raises
    ValueError naming what is wrong."""
    clusters = parse_registry(conf.get("delegate"), "config", "broker config")
    table = conf.get("delegate-policy") or {}
    if not isinstance(table, dict):
        raise ValueError("broker config: [delegate-policy] must be a table")
    unknown = set(table) - {"default", "custom"}
    if unknown:
        raise ValueError(f"broker config: [delegate-policy] has unknown keys: {sorted(unknown)}")
    specs = table.get("custom") or {}
    if not isinstance(specs, dict):
        raise ValueError("broker config: [delegate-policy.custom] must be a table of name = \"module:function\"")
    custom = {}
    for name, spec in specs.items():
        if name in BUILTIN_ORDERS:
            raise ValueError(f"[delegate-policy.custom]: '{name}' is a built-in policy")
        custom[name] = load_policy(name, spec)
    default = table.get("default", DEFAULT_POLICY)
    if not isinstance(default, str) or default.partition(":")[0] not in (
        set(BUILTIN_ORDERS) | set(custom)
    ):
        raise ValueError(f"[delegate-policy]: unknown default policy '{default}'")
    clash = {c.label for c in clusters if c.label} & set(custom)
    if clash:
        raise ValueError(f"broker config: labels {sorted(clash)} are policy names")
    return clusters, custom, default


#: Largest user registry file read: a few lines per target, so this is
#: thousands of targets; a larger file is refused, never read.
MAX_REGISTRY_BYTES = 256 * 1024


def read_small_file(path, limit):
    """The text of a regular file of at most limit bytes, None if there is
    no such file; ValueError naming path for anything else.  It is read
    on the job-manager's thread, so: opened without waiting (a FIFO would
    wait for a writer), and only if it is a regular file (not a FIFO, a
    device, /dev/zero) no larger than limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{path}: {st.st_size} bytes, more than the {limit} bytes it may have")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise ValueError(f"{path}: more than the {limit} bytes it may have")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}")
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")


def read_user_registry(path):
    """Clusters from a user's YAML registry file ('delegate:' as in broker
    config).  A missing file is an empty registry; anything else that is
    wrong raises ValueError naming the file."""
    text = read_small_file(path, MAX_REGISTRY_BYTES)
    if text is None:
        return []
    try:
        import yaml
    except ImportError:
        raise ValueError(f"{path}: PyYAML is not installed, so the file cannot be read")

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}")
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"delegate"}:
        raise ValueError(f"{path}: expected a mapping with one key, 'delegate'")
    return parse_registry(data.get("delegate"), "user", path)


def default_user_registry_path(environ=None):
    """$FLUX_DELEGATE_REGISTRY, else $XDG_CONFIG_HOME/flux/delegate.yaml
    (~/.config/flux/delegate.yaml): next to flux's own user config."""
    environ = os.environ if environ is None else environ
    if environ.get("FLUX_DELEGATE_REGISTRY"):
        return environ["FLUX_DELEGATE_REGISTRY"]
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "flux", "delegate.yaml")


# -- Policies: order the candidates for one job -------------------------------


class Candidate:
    """A target considered for one job, with what the pre-flight learned.

    verdict: "feasible" (its scheduler says it could run the job),
    "unknown" (no feasibility service there: ENOSYS), "infeasible",
    "unreachable" (no connection or no answer in time), or None before the
    pre-flight.  pending: jobs pending there (job-list), match_time:
    Fluxion's longest match time in seconds; None where not known.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self.verdict = None
        self.reason = None
        self.pending = None
        self.match_time = None
        self.remote = None

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
        for key in ("label", "reason", "pending", "match_time"):
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
}

#: What each built-in policy needs to know about the candidates.
POLICY_METRICS = {
    "random": (),
    "least_pending": ("pending",),
    "shortest_match": ("match_time",),
    "assign": (),
}


def load_policy(name, spec):
    """A site policy from 'module:function' (a module on sys.path, or
    delegate_handler for a function of the handler itself) or
    '/path/to/file.py:function'.  Raises ValueError."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"policy '{name}': '{spec}' is not 'module:function'")
    module_name, _, function = spec.rpartition(":")
    import importlib
    import importlib.util

    try:
        if module_name.endswith(".py") or "/" in module_name:
            modspec = importlib.util.spec_from_file_location(
                f"delegate_policy_{name}", module_name
            )
            module = importlib.util.module_from_spec(modspec)
            modspec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:  # pylint: disable=broad-except
        raise ValueError(f"policy '{name}': cannot import {module_name}: {exc}")
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


#: What a feasibility check needs of attributes.system: what schedulers
#: decide with.
FEASIBILITY_SYSTEM_KEYS = ("duration", "queue", "constraints")


def feasibility_jobspec(jobspec):
    """The jobspec a pre-flight sends: resources and what schedulers decide
    with, without the environment, files or user attributes (the whole
    jobspec can be megabytes)."""
    spec = {k: v for k, v in jobspec.items() if k not in ("attributes", "tasks")}
    system = (jobspec.get("attributes") or {}).get("system") or {}
    spec["attributes"] = {
        "system": {k: system[k] for k in FEASIBILITY_SYSTEM_KEYS if k in system}
    }
    tasks = []
    for task in jobspec.get("tasks") or []:
        if isinstance(task, dict) and isinstance(task.get("command"), list):
            task = dict(task, command=task["command"][:1])
        tasks.append(task)
    spec["tasks"] = tasks
    return spec


def remote_jobspec(jobspec, environment=None, origin=None):
    """The jobspec to submit remotely: the local one without what only
    means something here (dependencies, delegation attributes), with the
    environment put back (the job-manager keeps jobspecs without it) and
    the origin (the local job) recorded."""
    spec = copy.deepcopy(jobspec)
    system = spec.setdefault("attributes", {}).setdefault("system", {})
    for key in LOCAL_ONLY_ATTRIBUTES:
        system.pop(key, None)
    if environment is not None:
        system["environment"] = environment
    if origin is not None:
        system[ORIGIN_ATTRIBUTE] = origin
    return spec


def requeue_allowed(jobspec):
    """Whether a job that started remotely may run again elsewhere after an
    allocation failure: yes, unless -S delegate-requeue=false (or 0, no)."""
    try:
        value = jobspec["attributes"]["system"]["delegate-requeue"]
    except (KeyError, TypeError):
        return True
    return value not in (False, 0, "false", "False", "no", "0")


def origin_of(jobspec):
    """The origin a remote jobspec records, or None."""
    try:
        origin = jobspec["attributes"]["system"][ORIGIN_ATTRIBUTE]
    except (KeyError, TypeError):
        return None
    return origin if isinstance(origin, dict) else None


def same_origin(a, b):
    """Whether two origins name the same local job (its id, and its submit
    time: ids alone repeat across instances)."""
    try:
        return int(a["jobid"]) == int(b["jobid"]) and (
            abs(float(a["t_submit"]) - float(b["t_submit"])) < 1e-3
        )
    except (KeyError, TypeError, ValueError):
        return False


def job_name(jobspec):
    """The job's name as job-list shows it: attributes.system.job.name, or
    the base name of the command; None if neither."""
    try:
        name = jobspec["attributes"]["system"]["job"]["name"]
        if isinstance(name, str) and name:
            return name
    except (KeyError, TypeError):
        pass
    try:
        command = jobspec["tasks"][0]["command"]
        return os.path.basename(command[0]) or command[0]
    except (KeyError, IndexError, TypeError):
        return None


def delegations(eventlog):
    """(uri, remote jobid) of every "delegated" event."""
    found = []
    for entry in eventlog:
        context = entry.get("context") or {}
        if entry.get("name") == "delegated" and "jobid" in context:
            found.append((context.get("uri"), int(context["jobid"])))
    return found


def interrupted_submit(eventlog):
    """The target of the last submit attempt the eventlog records without
    its outcome: {"uri", "label" (or None), "timestamp"}, or None.

    A "delegate-choice" event precedes the first submit, a
    "delegate-failover" each next one; "delegated" records the answer.  An
    attempt with neither a "delegated" nor a "delegate-failover" after it
    was interrupted: the target may or may not have created the job."""
    attempt = None
    candidates = {}
    for entry in eventlog:
        name = entry.get("name")
        context = entry.get("context") or {}
        if name == "delegate-choice":
            candidates = {
                c.get("label") or c.get("uri"): c
                for c in context.get("candidates") or []
                if isinstance(c, dict)
            }
            attempt = (context.get("choice"), entry.get("timestamp"))
        elif name == "delegate-failover":
            attempt = (context.get("next"), entry.get("timestamp"))
        elif name == "delegated":
            attempt = None
    if attempt is None or attempt[0] not in candidates:
        return None
    record = candidates[attempt[0]]
    return {
        "uri": record.get("uri"),
        "label": record.get("label"),
        "timestamp": float(attempt[1] or 0.0),
    }


def outstanding_dependencies(eventlog):
    """Descriptions of the dependencies still held, from a job eventlog."""
    pending = set()
    for entry in eventlog:
        context = entry.get("context") or {}
        if entry.get("name") == "dependency-add":
            pending.add(context.get("description"))
        elif entry.get("name") == "dependency-remove":
            pending.discard(context.get("description"))
    return pending


def find_delegation(eventlog):
    """Context of the job's "delegated" event ({jobid, uri}), or None."""
    found = None
    for entry in eventlog:
        if entry.get("name") == "delegated":
            found = entry.get("context") or {}
        elif entry.get("name") == "delegate-failover":
            found = None  # that remote job failed: choose again
    return found


class RemoteOutcome:
    """What the remote job's eventlog says about its end."""

    def __init__(self):
        self.exception = None  # context of the first fatal exception
        self.wait_status = None  # from "finish"
        self.allocated = False  # "alloc": its shells may be starting
        self.started = False
        self.ended = False  # "clean" seen: nothing more will happen

    def update(self, name, context):
        context = context or {}
        if name == "exception":
            if context.get("severity", 0) == 0 and self.exception is None:
                self.exception = context
        elif name == "alloc":
            self.allocated = True
        elif name == "start":
            self.started = True
        elif name == "finish":
            self.wait_status = context.get("status")
        elif name == "clean":
            self.ended = True


def describe_origin(origin):
    """'job ƒX of HOST' for an origin record (remote data: checked)."""
    try:
        jobid = JobID(int(origin.get("jobid"))).f58
    except (TypeError, ValueError, OverflowError, OSError):
        jobid = "?"
    return f"job {jobid} of {str(origin.get('host'))[:64]}"


def check_identity(remote, remote_id, origin, on_verdict, job=None):
    """Is remote_id, on the connection remote, the job whose origin
    (ORIGIN_ATTRIBUTE) is origin?  on_verdict(verdict, why) with verdict
    "same", "gone" (no such job there), "other" (a job with that id made
    for someone else: a different instance at that URI) or "error" (no
    answer; why says what went wrong).  Errors in on_verdict are reported
    against job."""

    def on_jobspec(future):
        try:
            jobspec = answer_of(lambda: future.get_decode()["jobspec"])
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                on_verdict("gone", exc.strerror or str(exc))
            elif exc.errno == errno.EPERM:
                on_verdict("other", "it belongs to another user")
            else:
                on_verdict("error", exc.strerror or str(exc))
            return
        theirs = origin_of(jobspec)
        if same_origin(theirs, origin):
            on_verdict("same", None)
        elif theirs is None:
            on_verdict("other", "it records no origin")
        else:
            on_verdict("other", f"it was made for {describe_origin(theirs)}")

    remote.request(
        1024,
        lambda h: flux.job.kvslookup.job_info_lookup(h, remote_id, keys=["jobspec"]),
        on_jobspec,
        job=job,
    )


def brief(text, limit=300):
    """Text from a target (an error string, an exception note) as it goes
    into an event or a note: as it is, at most limit characters."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} characters)"


def describe_remote_exception(remote_id, uri, exception):
    """Note of the local DelegationFailure for a remote job exception."""
    kind = brief(exception.get("type", "unknown"), 64)
    note = brief(exception.get("note") or "")
    where = f"remote job {remote_id} on {uri}"
    if kind == "cancel":
        return f"{where} was canceled" + (f": {note}" if note else "")
    return f"{where} failed: {kind} exception" + (f": {note}" if note else "")


def release_updates(wait_status):
    """Jobspec updates that make job-exec 'run' the released local job for a
    moment and report wait_status, without job shells (test exec mode)."""
    return {
        "attributes.system.exec.test": {
            "run_duration": RELEASE_RUN_DURATION,
            "wait_status": int(wait_status),
        }
    }


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


# ---------------------------------------------------------------------------
# Runtime: the job-manager handle, connections to targets, logging.
# ---------------------------------------------------------------------------


def log(level, message):
    if runtime is not None:
        runtime.log(level, message)


def log_text(handle, level, text):
    """Log text to the broker log as it is.

    flux's Handle.log() hands its text to flux_log() as the printf
    *format*: a '%n' or '%s' in a user's value, a URI, a remote job's
    exception note or a traceback would make the broker write or read
    through garbage pointers.  Here the text is always an argument of a
    constant "%s" format."""
    data = str(text).encode("utf-8", "backslashreplace").replace(b"\0", b"\\0")
    lib.flux_log(handle.handle, int(level), b"%s", ffi.new("char[]", data))


def harden_bindings():
    """Make flux's bindings safe to run inside the broker, for every handle
    in this process (the handler's own, and any a site policy makes):

    - Handle.log() logs its text as it is (log_text), never as a format:
      the bindings document it as taking no C formatting.
    - An exception escaping a Python callback that a reactor runs (a
      future's continuation, a timer, a watcher) is logged with its
      traceback and goes no further.  The bindings would stop the reactor
      with it, and the reactor here is the job-manager's: the instance
      would exit.  The handler's own callbacks are guarded (guard()) so
      that their errors fail the job concerned; this catches the rest.
    - This thread (the job-manager's) counts as running a reactor, which it
      always is: the bindings' future.get() would otherwise reset SIGINT's
      disposition around every call (to make Ctrl-C work in a script), and
      in the broker signals are the broker's.
    """
    handle_class = flux.core.handle.Flux
    if getattr(handle_class, "delegate_hardened", False):
        return
    stop_error = handle_class.reactor_stop_error

    def safe_log(self, level, fstring):
        log_text(self, level, fstring)

    def reactor_stop_error(self, reactor=None):
        exception = type(self).set_exception(None)
        if exception is None:  # not from a failed callback: as before
            stop_error(self, reactor)
            return
        log_callback_exception(exception)

    handle_class.log = safe_log
    handle_class.reactor_stop_error = reactor_stop_error
    handle_class.reactor_enter()  # never left: see above
    handle_class.delegate_hardened = True


def log_callback_exception(exception):
    """Log an exception that a reactor callback let escape."""
    import traceback

    text = "".join(
        traceback.format_exception(type(exception), exception, exception.__traceback__)
    )
    log(syslog.LOG_ERR, f"uncaught in a reactor callback (ignored): {text}")


def guard(callback, job=None, owner=None):
    """callback made safe for the job-manager's reactor.

    In flux's bindings an exception escaping a future continuation or a
    watcher callback stops the reactor it runs on, here the job-manager's.
    Everything the reactor calls goes through this guard: an exception is
    reported against 'job' (log line with traceback + DelegationFailure) or,
    without a job, logged; it goes no further.  Callbacks of a handler that
    has since been unloaded do nothing.  'owner' is the Runtime the callback
    belongs to (default: the current one).
    """
    owner = owner or runtime

    def guarded(*args):
        if owner is None or owner.unloaded:
            return
        try:
            callback(*args)
        except Exception:  # pylint: disable=broad-except
            where = getattr(callback, "__qualname__", str(callback))
            try:
                if job is not None:
                    jobtap.report_exception(job.id, where)
                else:
                    owner.log_exception(where)
            except Exception:  # pylint: disable=broad-except
                pass

    return guarded


class Timer:
    """A one-shot timer on the job-manager's reactor that frees itself when
    it fires or is canceled: flux's bindings keep every watcher their
    handle made until it is destroyed, and a broker runs for months."""

    def __init__(self, seconds, callback, owner=None):
        self.callback = callback  # guarded by the caller (see guard())
        self.watcher = (owner or runtime).handle.timer_watcher_create(seconds, self.fire)
        self.watcher.start()

    def fire(self, *unused):
        self.cancel()
        self.callback()

    def cancel(self):
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            free_watcher(watcher)


def free_watcher(watcher):
    """Stop a watcher and destroy it (also from its own callback: libev no
    longer looks at a watcher once its callback runs)."""
    watcher.stop()
    watcher.destroy()


def then(future, callback, job=None):
    """future.then(callback), guarded (see guard()); the first answer of a
    request to a target also releases its bytes (RemoteInstance.request).
    No libflux timeouts: a remote future's timer would sit on its
    connection's reactor, which runs only when a message arrives; timeouts
    are job-manager timers."""
    guarded = guard(callback, job)

    def continuation(fut):
        answered(fut)
        guarded(fut)

    future.then(continuation)
    return future


def answered(future):
    """Release the bytes of a request to a target: it has been answered."""
    pending = getattr(future, "delegate_unanswered", None)
    if pending is not None:
        future.delegate_unanswered = None
        outgoing = pending
        outgoing.remote.in_flight.discard(outgoing)
        outgoing.remote.release(outgoing.nbytes)


def payload_size(obj):
    """Bytes a request carrying obj takes on the wire, roughly (a signed J is
    base64: a third more)."""
    return len(json.dumps(obj)) * 4 // 3 + 1024


class RemoteInstance:
    """An open connection to a target.

    Its handle runs on a reactor of its own, not the job-manager's: when a
    connection breaks, libflux stops the reactor the handle is on
    (flux_reactor_stop_error() in its message dispatch), and that must never
    be the job-manager's.  The job-manager's reactor watches the handle's
    poll fd and runs the handle's reactor, without waiting, whenever it has
    something to do; the continuations of remote futures so run on the
    job-manager's thread as before.  No timers go on the handle's reactor
    (they would only run when a message arrives): timeouts are job-manager
    timers.
    """

    def __init__(self, uri, handle, runtime):
        self.uri = uri
        self.handle = handle
        self.runtime = runtime
        self.lost = None  # why the connection is gone, once it is
        self.listeners = set()  # jobs to tell if it is lost
        self.reactor = lib.flux_reactor_create(0)
        if self.reactor == ffi.NULL or lib.flux_set_reactor(handle.handle, self.reactor) < 0:
            raise OSError(ffi.errno, f"cannot set up a reactor for {uri}")
        fd = lib.flux_pollfd(handle.handle)
        if fd < 0:
            raise OSError(ffi.errno, f"cannot poll the connection to {uri}")
        self.watcher = runtime.handle.fd_watcher_create(
            fd, self.on_ready, events=FLUX_POLLIN | FLUX_POLLERR
        )
        self.watcher.start()
        self.more = None
        self.counters = ffi.new("flux_msgcounters_t *")
        self.unanswered = 0  # bytes of requests sent and not yet answered
        self.in_flight = set()  # Outgoing requests sent and not yet answered
        self.queue = []  # Outgoing requests waiting for the target to read
        self.opened = time.time()
        # The socket the requests are written to (to the target's broker,
        # or to ssh), to see how much room its buffer has left.
        self.socket = SendBuffer.of_handle(fd)
        self.writable = None  # POLLOUT watcher while requests wait for room
        # Watches (streaming futures) made on this connection: once it is
        # lost, none may try to send its cancel when it is collected.
        self.watches = weakref.WeakSet()

    def request(self, nbytes, send, callback, job=None, guarded=True):
        """Send a request: send(handle) -> future, whose answers go to
        callback(future) (through guard() unless guarded=False).  Sent now,
        or, if the target has left too much unanswered for it to fit safely
        in the socket's buffer, queued until enough answers have come back
        (backpressure: a send never blocks the job-manager).  Returns the
        Outgoing request."""
        outgoing = Outgoing(self, nbytes, send, callback, job, guarded)
        if self.lost:
            outgoing.fail(OSError(errno.ENOTCONN, f"the connection to {self.uri} is lost"))
            return outgoing
        self.queue.append(outgoing)
        self.flush()
        return outgoing

    def fits(self, nbytes):
        """Whether a request of nbytes can be written now without blocking:
        the socket's buffer has room for all of it (libflux writes a whole
        message before it returns, waiting for room if there is none)."""
        if self.socket is not None:
            return self.socket.has_room(nbytes)
        return not self.unanswered or self.unanswered + nbytes <= SEND_BUDGET

    def oversized(self, nbytes):
        """Whether a request of nbytes is too large to be written without
        blocking even once the target has read everything."""
        if self.socket is not None:
            return not self.socket.could_hold(nbytes)
        return nbytes > SEND_BUDGET

    def flush(self):
        """Send queued requests while they fit; wait for room otherwise."""
        while self.queue and not self.lost:
            head = self.queue[0]
            if not self.fits(head.nbytes):
                self.wait_for_room()
                return
            self.queue.pop(0)
            head.send_now()
        self.stop_waiting_for_room()

    def cancel_watch(self, future):
        """Stop a watch made on this connection: its cancel request is
        sent only if the socket has room for it now (flux sends it itself,
        outside request(), and would wait for room); otherwise, or on a
        lost connection, the watch is dropped without one (the target
        ends it when the connection goes, or the job's eventlog does)."""
        if not self.lost and self.fits(1024):
            try:
                future.cancel(stop=True)
                return
            except OSError:
                pass
        future.needs_cancel = False
        future.stop()

    def wait_for_room(self):
        if self.socket is None or self.writable is not None:
            return  # answers coming back call flush() (release())
        self.writable = self.runtime.handle.fd_watcher_create(
            self.socket.fd, self.on_writable, events=FLUX_POLLOUT
        )
        self.writable.start()

    def stop_waiting_for_room(self):
        watcher, self.writable = self.writable, None
        if watcher is not None:
            free_watcher(watcher)

    def on_writable(self, *unused):
        """The target read enough for the socket to take more."""
        try:
            self.flush()
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_exception(f"sending to {self.uri}")

    def release(self, nbytes):
        self.unanswered = max(0, self.unanswered - nbytes)
        self.flush()

    def on_ready(self, *unused):
        """Run the handle's reactor until it has nothing more to do now;
        never raises (the job-manager's reactor calls it).

        One pass of the handle's reactor reads one message; a future it
        fulfills runs its continuation on the next pass (libflux defers
        continuations to a check watcher).  So: passes while messages are
        queued or were read, then two more.  A message read in what was
        to be the last pass must still get its two: its arrival's wakeup
        was consumed by that pass (the handle's poll fd is edge-triggered),
        and nothing would come back for its continuation.
        """
        try:
            if self.more is not None:
                self.more.cancel()
                self.more = None
            extra = 2
            received = self.received()
            # A bounded turn: other events of the job-manager's reactor
            # (its own jobs' messages) get theirs in between.
            deadline = time.monotonic() + 0.01
            for _ in range(64):
                if time.monotonic() > deadline:
                    break
                if self.lost:
                    return
                if lib.flux_reactor_run(self.reactor, lib.FLUX_REACTOR_NOWAIT) < 0:
                    self.close("the connection was lost")
                    return
                events = lib.flux_pollevents(self.handle.handle)
                if events < 0 or events & FLUX_POLLERR:
                    self.close("the connection was lost")
                    return
                now = self.received()
                if events & FLUX_POLLIN or now != received:
                    received = now
                    extra = 2
                elif extra == 0:
                    return
                else:
                    extra -= 1
            # More is queued: come back on the next pass of the reactor.
            self.more = Timer(0.0, self.on_ready, self.runtime)
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_exception(f"connection to {self.uri}")

    def received(self):
        """How many messages the handle has read so far."""
        lib.flux_get_msgcounters(self.handle.handle, self.counters)
        c = self.counters
        return c.response_rx + c.request_rx + c.event_rx + c.control_rx

    def close(self, reason):
        """The connection is gone: stop watching it, fail what was asked of
        it (no answer can come any more), and tell its jobs.  The handle
        stays referenced (futures still point at it)."""
        if self.lost:
            return
        self.lost = reason
        free_watcher(self.watcher)
        self.stop_waiting_for_room()
        for watch in list(self.watches):
            # Its cancel request could only fail (a BrokenPipeError
            # printed on the broker's stderr when the future is collected).
            watch.needs_cancel = False
        if self.more is not None:
            self.more.cancel()
        self.runtime.connections.forget(self, reason)
        queued, self.queue = self.queue, []
        in_flight, self.in_flight = list(self.in_flight), set()
        for outgoing in queued:  # never sent: say so
            outgoing.fail(OSError(errno.ENOTCONN, f"the connection was lost: {reason}"))
        for outgoing in in_flight:  # sent: no answer can come any more
            outgoing.fail(
                OSError(errno.ECONNRESET, f"the connection was lost: {reason}"),
                sent=True,
            )
        for job in list(self.listeners):
            guard(job.connection_lost, job, self.runtime)(self, reason)


class Outgoing:
    """A request to a target: sent, or waiting in its connection's queue."""

    def __init__(self, remote, nbytes, send, callback, job, guarded):
        self.remote = remote
        self.nbytes = nbytes
        self.send = send
        self.callback = callback
        self.job = job
        self.guarded = guarded
        self.future = None
        self.canceled = False

    @property
    def sent(self):
        return self.future is not None

    def fail(self, error, sent=False):
        """Answer the request with error ('sent': it may have reached the
        target)."""
        self.future = FailedRequest(error, sent)
        if self.guarded:
            guard(self.callback, self.job, self.remote.runtime)(self.future)
        else:
            self.callback(self.future)

    def send_now(self):
        try:
            future = self.send(self.remote.handle)
        except OSError as exc:
            self.fail(exc)  # not sent (e.g. the connection broke)
            return
        self.future = future
        if hasattr(future, "needs_cancel"):
            self.remote.watches.add(future)
        self.remote.unanswered += self.nbytes
        self.remote.in_flight.add(self)
        future.delegate_unanswered = self
        if self.guarded:
            then(future, self.callback, job=self.job)
        else:
            future.then(self.callback)

    def withdraw(self):
        """Withdraw the request if it is still queued; True if it was."""
        if self.future is None and self in self.remote.queue:
            self.remote.queue.remove(self)
            self.canceled = True
            return True
        return False


class FailedRequest:
    """Stands in for the future of a request that failed on our side: not
    sent, or sent on a connection that then broke ('sent')."""

    def __init__(self, error, sent=False):
        self.error = error
        self.sent = sent

    def get(self):
        raise self.error

    get_id = get_event = get_jobinfo = get

    def cancel(self, stop=False):
        pass


#: Where the socket of a connection cannot be found: bytes of requests a
#: target may leave unanswered before further requests wait their turn.
SEND_BUDGET = 128 * 1024


class SendBuffer:
    """The send buffer of a connection's socket.

    libflux writes a message whole: when the socket's buffer has no room
    for it, flux_send() waits (poll for POLLOUT) until the target has read
    enough, and on the job-manager's thread a target that stops reading
    would stall everything.  So a request is written only when the buffer
    has room for all of it (its room is the buffer's size less what the
    target has not read yet, SIOCOUTQ); and one too large for even an empty
    buffer is never written on the job-manager's thread at all.
    """

    #: Asked of the kernel for each connection: it grants up to
    #: net.core.wmem_max (twice that, for its own accounting).
    WANTED = 4 * 1024 * 1024

    def __init__(self, fd):
        self.fd = fd
        sock = socket.socket(fileno=fd)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.WANTED)
            except OSError:
                pass
            self.size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        finally:
            sock.detach()  # the fd stays the connection's

    @classmethod
    def of_handle(cls, pollfd):
        """The SendBuffer of the socket behind a handle's poll fd (an epoll
        fd whose watched fds /proc lists), or None if there is none."""
        try:
            with open(f"/proc/self/fdinfo/{pollfd}") as fp:
                fds = [int(line.split()[1]) for line in fp if line.startswith("tfd:")]
            for fd in fds:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    return cls(fd)
        except (OSError, ValueError, IndexError):
            pass
        return None

    def unread(self):
        """Bytes written and not yet read by the other end (with the
        kernel's overhead)."""
        buf = fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ
        return struct.unpack("i", buf)[0]

    @staticmethod
    def cost(nbytes):
        """What nbytes take in the buffer: the kernel counts its own
        bookkeeping (a few hundred bytes to a page per buffer of data)."""
        return nbytes + nbytes // 4 + 8192

    def has_room(self, nbytes):
        return self.cost(nbytes) <= self.size - self.unread()

    def could_hold(self, nbytes):
        """Whether nbytes would fit once the other end has read enough to
        wake a writer (POLLOUT comes when under a quarter is unread)."""
        return self.cost(nbytes) <= self.size // 2

#: Errors after which a connection is not reused.
CONNECTION_ERRORS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.EPIPE,
    errno.ENOTCONN,
    errno.EHOSTUNREACH,
}


#: Most helper threads (opening connections, oversized submits) running at
#: once, over all targets; more wait their turn.
MAX_HELPER_THREADS = 8


class Helpers:
    """Blocking work done off the job-manager's thread: flux_open() (which
    retries connect() with sleeps and waits for the target's handshake, for
    ssh:// the whole login) and oversized sends.

    At most MAX_HELPER_THREADS threads at once, over all targets, started
    in order; each result comes back to the job-manager's reactor through a
    pipe and an fd watcher, where on_done(result) runs (result: what the
    work returned, or the exception it raised).  A thread only runs its
    work: it never touches jobtap or the job-manager's reactor.

    A child process a helper starts (ssh, for ssh:// URIs) gets no blocked
    signals: the broker blocks them all in its module threads, and a child
    inheriting that mask would ignore the SIGTERM that ends it.
    """

    def __init__(self, runtime, limit=MAX_HELPER_THREADS):
        self.runtime = runtime
        self.limit = limit
        self.waiting = collections.deque()  # HelperTasks not started yet
        self.running = set()  # started, result not handled yet
        self.results = queue.SimpleQueue()
        self.lock = threading.Lock()  # running, closed, the pipe's write end
        self.closed = False
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watcher = runtime.handle.fd_watcher_create(
            self.rfd, self.on_readable, events=FLUX_POLLIN
        )
        self.watcher.start()

    def start(self, name, work, on_done):
        """Run work(task) on a helper thread, now or when one is free."""
        task = HelperTask(self, name, work, on_done)
        self.waiting.append(task)
        self.start_waiting()
        return task

    def start_waiting(self):
        while self.waiting and len(self.running) < self.limit and not self.closed:
            task = self.waiting.popleft()
            if task.withdrawn:
                continue
            with self.lock:
                self.running.add(task)
            task.launched = True  # no withdrawing it from now on
            thread = threading.Thread(target=task.run, name=f"delegate-{task.name}")
            thread.daemon = True
            thread.start()

    def on_readable(self, *unused):
        """fd watcher: drain the pipe first, whatever happens next, or the
        (level-triggered) watcher would fire again and again."""
        try:
            while os.read(self.rfd, 512):
                pass
        except Exception:  # pylint: disable=broad-except
            pass
        guard(self.on_results, owner=self.runtime)()

    def on_results(self):
        while True:
            try:
                task, result = self.results.get_nowait()
            except queue.Empty:
                break
            with self.lock:
                self.running.discard(task)
            guard(task.on_done, owner=self.runtime)(result)
        self.start_waiting()

    def threads(self):
        return len(self.running)

    def close(self):
        """Unload: no more results.  Threads still running finish on their
        own; the last one closes the pipe's write end (closing it under
        them would let a write land in whatever file reuses its number)."""
        self.waiting.clear()
        free_watcher(self.watcher)
        for task in list(self.running):
            task.give_up()
        with self.lock:
            self.closed = True
            os.close(self.rfd)
            if not self.running:
                os.close(self.wfd)


class HelperTask:
    """One piece of work for a helper thread (Helpers.start())."""

    def __init__(self, helpers, name, work, on_done):
        self.helpers = helpers
        self.name = name
        self.work = work
        self.on_done = on_done
        self.withdrawn = False
        self.launched = False  # a thread was started for it
        self.tid = None  # the thread's, once it runs
        self.given_up = False
        self.interrupt = None  # stops what the work waits on (give_up())
        self.lock = threading.Lock()

    @property
    def started(self):
        return self.launched

    def withdraw(self):
        """Drop the task if no thread has started it; True if dropped."""
        if self.started or self.withdrawn:
            return False
        self.withdrawn = True
        return True

    def run(self):
        """On the helper thread."""
        self.tid = threading.get_native_id()
        try:
            jobtap.clean_child_signals()
            result = self.work(self)
        except BaseException as exc:  # pylint: disable=broad-except
            result = exc
        helpers = self.helpers
        with helpers.lock:
            if helpers.closed:
                helpers.running.discard(self)
                if not helpers.running:
                    os.close(helpers.wfd)
                return
            helpers.results.put((self, result))
            try:
                os.write(helpers.wfd, b"\0")
            except OSError:
                pass

    def on_give_up(self, interrupt):
        """On the helper thread: what give_up() is to call to stop the
        work's wait (called at once if it was given up already)."""
        with self.lock:
            self.interrupt = interrupt
            if not self.given_up or interrupt is None:
                return
        interrupt()

    def give_up(self):
        """No one waits for the result any more: stop the work's wait and
        end the processes it started, so that the thread ends."""
        with self.lock:  # held while interrupting: the work may not close
            self.given_up = True  # what the interrupt acts on meanwhile
            if self.interrupt is not None:
                try:
                    self.interrupt()
                except OSError:
                    pass
        self.end_children()

    def end_children(self):
        """SIGTERM the processes this task's thread started (the ssh of a
        connect given up): its flux_open() then fails, and the thread
        ends.  Children are listed per thread by /proc."""
        if self.tid is None:
            return
        try:
            with open(f"/proc/self/task/{self.tid}/children") as fp:
                pids = [int(pid) for pid in fp.read().split()]
        except (OSError, ValueError):
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


def open_connection(uri, timeout, task):
    """On a helper thread: flux_open(uri).  For a local:// URI the
    broker's handshake (one byte, sent once it accepts the connection) is
    awaited first on a connection of our own, which the job-manager can
    shut down once no job waits any more (task.give_up()), and which gives
    up by itself after timeout: flux_open() would wait for it for ever, and
    a target that accepts and never answers would keep the thread."""
    if uri.startswith("local://"):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout *= 2  # a backstop: give_up() usually comes first
        probe.settimeout(timeout)
        try:
            task.on_give_up(lambda: probe.shutdown(socket.SHUT_RDWR))
            probe.connect(flux.uri.JobURI(uri).path)
            if not probe.recv(1) and task.given_up:
                raise OSError(errno.ECANCELED, "given up")
        except socket.timeout:
            raise OSError(
                errno.ETIMEDOUT, f"the broker accepted, but did not answer within {timeout:g}s"
            )
        except OSError:
            if task.given_up:
                raise
            # flux_open() says what is wrong, in flux's words
        finally:
            task.on_give_up(None)  # not the probe's fd once it is closed
            probe.close()
    return flux.Flux(uri)


class Connections:
    """One connection per target URI, opened once and shared by every job.

    A connection is opened by a helper thread (Helpers): one attempt per
    target at a time, however many jobs wait for it, each job with its own
    connect-timeout.  An attempt all of whose jobs gave up is withdrawn if
    it has not started, and its ssh ended if it has; a hung attempt (a
    target that accepts and never answers) is never doubled: later jobs
    wait for it too.
    """

    def __init__(self, runtime, timeout):
        self.runtime = runtime
        self.timeout = timeout
        self.open = {}  # uri -> RemoteInstance
        self.waiters = {}  # uri -> [Waiter]
        self.opening = {}  # uri -> HelperTask of the attempt in progress
        # Connections dropped after an error stay referenced: futures still
        # in flight on them must not see their handle closed under them.
        self.retired = []

    def get(self, uri, on_open, on_error, job=None):
        """Call on_open(remote) with the connection to uri, once open, or
        on_error(message)."""
        remote = self.open.get(uri)
        if remote is not None:
            on_open(remote)
            return
        owner = self.runtime
        waiter = Waiter(
            self, uri, guard(on_open, job, owner), guard(on_error, job, owner)
        )
        self.waiters.setdefault(uri, []).append(waiter)
        if uri not in self.opening:
            timeout = self.timeout
            attempt = []
            attempt.append(self.runtime.helpers.start(
                "connect",
                lambda task: open_connection(uri, timeout, task),
                lambda result: self.on_result(uri, result, attempt[0]),
            ))
            self.opening[uri] = attempt[0]

    def on_result(self, uri, result, attempt):
        current = self.opening.get(uri) is attempt
        if current:
            del self.opening[uri]
        if isinstance(result, BaseException):
            message = getattr(result, "strerror", None) or str(result)
            self.runtime.log(syslog.LOG_INFO, f"cannot connect to {uri}: {message}")
            if current:  # an attempt given up on answers no one
                for waiter in self.waiters.pop(uri, []):
                    waiter.finish(None, message)
            return
        waiters = self.waiters.pop(uri, [])
        if uri in self.open:
            # Two attempts both got through (one was given up on): keep
            # the connection in use; this handle closes when collected.
            for waiter in waiters:
                waiter.finish(self.open[uri], None)
            return
        try:
            remote = RemoteInstance(uri, result, self.runtime)
        except Exception as exc:  # pylint: disable=broad-except
            # Whatever went wrong, every waiting job gets an answer.
            self.runtime.log_exception(f"setting up the connection to {uri}")
            message = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
            for waiter in waiters:
                waiter.finish(None, message)
            return
        self.open[uri] = remote
        self.runtime.log(syslog.LOG_INFO, f"connected to {uri}")
        for waiter in waiters:
            waiter.finish(remote, None)

    def given_up(self, waiter):
        """A job stopped waiting for uri's connection: if it was the last,
        the attempt is withdrawn, or its ssh (if any) ended."""
        waiters = self.waiters.get(waiter.uri, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if waiters:
            return
        self.waiters.pop(waiter.uri, None)
        attempt = self.opening.pop(waiter.uri, None)
        if attempt is not None and not attempt.withdraw():
            # The next job for this target starts a new attempt instead of
            # joining one that is being ended.
            attempt.give_up()

    def forget(self, remote, reason):
        if self.open.get(remote.uri) is remote:
            del self.open[remote.uri]
        self.retired.append(remote)
        self.runtime.log(syslog.LOG_INFO, f"connection to {remote.uri} closed: {reason}")

    def close(self):
        for attempt in self.opening.values():
            attempt.withdraw()


class Waiter:
    """A job waiting for a connection, with its own timeout."""

    def __init__(self, connections, uri, on_open, on_error):
        self.connections = connections
        self.uri = uri
        self.on_open = on_open
        self.on_error = on_error
        self.timer = Timer(
            connections.timeout,
            guard(self.expire, owner=connections.runtime),
            connections.runtime,
        )

    def finish(self, remote, message):
        self.timer.cancel()
        if remote is not None:
            self.on_open(remote)
        else:
            self.on_error(message)

    def expire(self, *unused):
        if self not in self.connections.waiters.get(self.uri, []):
            return
        attempt = self.connections.opening.get(self.uri)
        self.connections.given_up(self)
        if attempt is not None and not attempt.started:
            self.on_error(
                f"not tried within {self.connections.timeout:g}s: all"
                f" {MAX_HELPER_THREADS} connection helpers were busy"
            )
        else:
            self.on_error(f"no answer within {self.connections.timeout:g}s")


#: Jobs being delegated at once (from the look at their eventlog to the
#: creation of their remote job): more wait their turn.
ADMISSION_WINDOW = 32


class Admission:
    """At most ADMISSION_WINDOW jobs being delegated at once.

    Each delegation asks the job-manager, the KVS and the target a few
    questions; a burst of a thousand jobs asking all at once fills every
    queue on the way, and a plain local job submitted meanwhile waits
    behind all of it.  A window a few dozen jobs wide keeps the target
    busy and the job-manager answering.
    """

    def __init__(self, limit=ADMISSION_WINDOW):
        self.limit = limit
        self.active = set()  # ids of jobs being delegated
        self.waiting = collections.OrderedDict()  # id -> job, in order

    def admit(self, job):
        """Whether job may go ahead now; if not, it is called back
        (check_ready()) when its turn comes."""
        if job.id in self.active:
            return True
        if len(self.active) < self.limit and not self.waiting:
            self.active.add(job.id)
            return True
        self.waiting[job.id] = job
        return False

    def leave(self, job):
        """job is no longer being delegated (its remote job exists, it
        ended, or it waits for other dependencies): let the next in."""
        self.waiting.pop(job.id, None)
        if job.id not in self.active:
            return
        self.active.discard(job.id)
        while self.waiting and len(self.active) < self.limit:
            _, following = self.waiting.popitem(last=False)
            self.active.add(following.id)
            guard(following.check_ready, following)()
            if following.phase == WAITING and not following.checking:
                self.active.discard(following.id)  # nothing to do now (held)


class Runtime:
    """State of one loaded handler: plugin conf, the job-manager's handle,
    connections, the registry and policies, and the jobs it follows."""

    def __init__(self, conf):
        self.conf = plugin_options(conf)
        self.unloaded = False
        self.handle = flux.Flux(handle=ffi.cast("flux_t *", jobtap.handle()))
        # The job-manager owns its handle: the wrapper must never close it.
        self.handle.incref()
        self.hostname = socket.gethostname()
        # This instance's own socket (to refuse delegating to itself).
        self.local_uri = None
        self.submit_timeout = self.conf["submit-timeout"]
        self.preflight_timeout = self.conf["preflight-timeout"]
        connect_timeout = self.conf["connect-timeout"]
        self.reconnect_interval = self.conf["reconnect-interval"]
        self.reconnect_timeout = self.conf["reconnect-timeout"]
        self.jobs = {}
        self.admission = Admission()
        self.helpers = Helpers(self)
        self.connections = Connections(self, connect_timeout)
        # Registry: broker config [[delegate]] + the user's registry file.
        self.configured = False
        self.rejected_conf = None
        self.config_clusters = []
        self.registry_error = None
        self.user_registry_path = self.conf.get("registry") or default_user_registry_path()
        self.user_clusters = []
        self.user_registry_stamp = None
        self.user_registry_read = False
        self.user_registry_checked = 0.0
        self.user_registry_error = None
        self.registry = Registry()
        self.policies = dict(BUILTIN_ORDERS)
        self.custom_policies = {}
        self.default_policy = DEFAULT_POLICY

    # -- configuration -------------------------------------------------------

    def configure(self, conf):
        """conf.update: the broker config (at load, and on 'flux config
        reload').  A bad registry or policy table is reported and the
        previous configuration kept.  The error is raised (so that 'flux
        config reload' fails with the message) only for a config not seen
        before: when the plugin is loaded from broker config, jobtap passes
        the same config twice, and failing then would stop the instance
        from starting."""
        try:
            clusters, custom, default = parse_policy_config(conf)
        except Exception as exc:  # pylint: disable=broad-except
            message = str(exc) if isinstance(exc, ValueError) else (
                f"delegate config: {type(exc).__name__}: {exc}"
            )
            fingerprint = json.dumps(conf, sort_keys=True, default=str)
            first_time = fingerprint != self.rejected_conf
            self.rejected_conf = fingerprint
            self.registry_error = message
            self.log(syslog.LOG_ERR, f"{message} (the previous registry is kept)")
            if self.configured and first_time:
                raise ValueError(message)
            self.configured = True
            self.refresh_user_registry(force=True)
            return
        self.configured = True
        self.rejected_conf = None
        self.registry_error = None
        self.config_clusters = clusters
        self.custom_policies = custom
        self.policies = dict(BUILTIN_ORDERS, **custom)
        self.default_policy = default
        self.refresh_user_registry(force=True)
        self.log(
            syslog.LOG_INFO,
            f"registry: {len(self.registry.clusters)} targets"
            f" ({len(clusters)} from broker config), default policy {default}",
        )

    def refresh_user_registry(self, force=False):
        """Re-read the user's registry file if it changed: one stat(2), at
        most once a second (force: now), since it runs on the job-manager's
        thread; read only when the stat differs from the last read's.  A
        file with errors is reported and its previous content kept."""
        now = time.time()
        if not force and now - self.user_registry_checked < 1.0:
            return
        self.user_registry_checked = now
        path = self.user_registry_path
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
        except OSError:
            stamp = None
        if stamp != self.user_registry_stamp or not self.user_registry_read:
            self.user_registry_read = True
            self.user_registry_stamp = stamp
            try:
                self.user_clusters = read_user_registry(path)
                self.user_registry_error = None
            except ValueError as exc:
                self.user_registry_error = str(exc)
                self.log(syslog.LOG_ERR, f"user registry: {exc} (keeping the previous one)")
        self.registry, notes = merge_registry(
            self.config_clusters, self.user_clusters, self.policies
        )
        if force:
            for note in notes:
                self.log(syslog.LOG_INFO, note)

    def start(self):
        """Once this is the current runtime (guard() runs only its
        callbacks): ask the broker for this instance's own URI."""
        then(self.handle.rpc("attr.get", {"name": "local-uri"}), self.on_local_uri)

    def on_local_uri(self, future):
        self.local_uri = future.get()["value"]

    def is_this_instance(self, uri):
        """Whether uri names this instance: its own socket, directly or
        through ssh to this host."""
        if not self.local_uri:
            return False
        try:
            theirs = flux.uri.JobURI(uri)
            mine = flux.uri.JobURI(self.local_uri)
            if theirs.scheme not in ("local", "ssh"):
                return False
            if theirs.scheme == "ssh":
                host = theirs.netloc.rpartition("@")[2].rpartition(":")[0] or (
                    theirs.netloc.rpartition("@")[2]
                )
                here = {self.hostname, self.hostname.split(".")[0], "localhost", "127.0.0.1", "::1"}
                if host not in here:
                    return False
            if os.path.normpath(theirs.path) == os.path.normpath(mine.path):
                return True
            return os.path.samefile(theirs.path, mine.path)
        except Exception:  # pylint: disable=broad-except
            return False

    def policy_metrics(self, policy):
        """What the pre-flight must ask for a policy: a site policy gets
        everything that can be known."""
        if policy is None:
            return ()
        return POLICY_METRICS.get(policy, ("pending", "match_time"))

    def policy_names(self):
        return tuple(self.policies)

    def log(self, level, message):
        try:
            log_text(self.handle, level, f"delegate: {message}")
        except Exception:  # pylint: disable=broad-except
            pass

    def log_exception(self, where):
        import traceback

        self.log(syslog.LOG_ERR, f"{where}: {traceback.format_exc()}")

    def query(self):
        phases = {}
        for job in self.jobs.values():
            phases[job.phase] = phases.get(job.phase, 0) + 1
        return {
            "connections": sorted(self.connections.open),
            # Bytes the socket of each connection can hold: a request too
            # large for half of it goes over a connection of its own.
            "send-buffers": {
                uri: remote.socket.size if remote.socket else None
                for uri, remote in self.connections.open.items()
            },
            "helper-threads": self.helpers.threads(),
            "admission": {
                "active": len(self.admission.active),
                "waiting": len(self.admission.waiting),
            },
            "jobs": phases,
            # Watchers (timers, fds) the handler holds on the job-manager's
            # reactor: back to a few once its jobs are done.
            "watchers": len(getattr(self.handle, "_active_watchers", ())),
            "submit-timeout": self.submit_timeout,
            "connect-timeout": self.connections.timeout,
            "preflight-timeout": self.preflight_timeout,
            "reconnect-timeout": self.reconnect_timeout,
            "registry": [
                dict(c.extra, uri=c.uri, label=c.label, origin=c.origin)
                for c in self.registry.clusters
            ],
            "registry-error": self.registry_error,
            "user-registry": self.user_registry_path,
            "user-registry-error": self.user_registry_error,
            "policies": sorted(self.policies),
            "default-policy": self.default_policy,
        }

    def unload(self):
        self.unloaded = True
        self.connections.close()
        self.helpers.close()
        for job in list(self.jobs.values()):
            job.stop_following()


runtime = None


# ---------------------------------------------------------------------------
# A delegated job: the state machine described at the top of this file.
# ---------------------------------------------------------------------------

WAITING = "waiting"  # held; waiting for other dependencies
SUBMITTING = "submitting"  # resolving, connecting, submitting remotely
RECOVERING = "recovering"  # looking for the job a lost submit may have made
DELEGATED = "delegated"  # remote job exists and is followed
RELEASING = "releasing"  # remote finished; local job run through to its end
ENDED = "ended"  # nothing left to do


class Submission:
    """One submit of a job to a target, and what to do with its answer,
    whenever it comes: after the job-manager's own timeout, a job the target
    created anyway is canceled, so that no remote job runs that nobody
    follows.  After the handler that sent it was unloaded, the job is left
    for the reloaded handler to find (Recovery)."""

    def __init__(self, job, remote, uri):
        self.job = job
        self.remote = remote
        self.uri = uri
        self.owner = runtime
        self.answered = False

    def send(self):
        self.sent = time.time()
        spec = json.dumps(self.job.remote_spec)
        self.timer = Timer(
            max(0.0, self.job.submit_deadline - time.time()),
            guard(lambda: self.job.on_submit_timeout(self), self.job, self.owner),
            self.owner,
        )
        nbytes = payload_size(self.job.remote_spec)
        if self.remote.oversized(nbytes):
            # Too large to write without blocking even to a target that
            # reads: sent by a helper thread, over a connection of its own.
            self.owner.log(
                syslog.LOG_INFO,
                f"{self.job.name}: jobspec of {nbytes} bytes: submitting it to"
                f" {self.uri} over a connection of its own",
            )
            self.outgoing = self.owner.helpers.start(
                "submit",
                lambda task: submit_on_own_connection(self.uri, spec),
                lambda result: self.on_answer(HelperAnswer(result)),
            )
            return
        # Not guarded: the answer must be handled even after an unload.
        self.outgoing = self.remote.request(
            nbytes,
            lambda handle: flux.job.submit_async(handle, spec),
            self.on_answer,
            guarded=False,
        )

    def on_answer(self, future):
        try:
            answered(future)
            self.answered = True
            self.timer.cancel()
            try:
                remote_id = answer_of(future.get_id)
            except OSError as exc:
                if not self.owner.unloaded:
                    sent = getattr(future, "sent", True)
                    guard(self.job.on_submit_error, self.job, self.owner)(self, exc, sent)
                return
            job = self.job
            current = job.submission is self and job.phase == SUBMITTING
            if current and not self.owner.unloaded:
                guard(job.on_submitted, job, self.owner)(self, remote_id)
                return
            if current:
                # Unloaded mid-submit: the reloaded plugin finds this job
                # (Recovery) and follows it; canceling it would fail the
                # local job.  (A job ended meanwhile is withdrawn below.)
                self.owner.log(
                    syslog.LOG_INFO,
                    f"{job.name}: {JobID(remote_id).f58} created on {self.uri}"
                    " after the plugin was unloaded; left for it to find",
                )
                return
            if job.phase == ENDED and job.canceled_reason:
                why = job.canceled_reason
            else:
                why = "the target answered after the submit timed out"
            self.withdraw(JobID(remote_id), why)
        except Exception:  # pylint: disable=broad-except
            self.owner.log_exception("submit answer")

    def withdraw(self, remote_id, why):
        """Cancel a remote job nobody will follow."""
        self.owner.log(
            syslog.LOG_INFO,
            f"{self.job.name}: canceling {remote_id.f58} on {self.uri}: {why}",
        )
        self.withdrawn = self.remote.request(
            1024,
            lambda h: flux.job.cancel_async(h, remote_id, f"delegate: {why}"),
            answered,
            guarded=False,
        )


def answer_of(get):
    """get(): the value of a future, with any failure to read the answer
    (an error string that is not UTF-8, a malformed payload) as an OSError
    (EPROTO), so that it is handled as an error answer, not lost."""
    try:
        return get()
    except OSError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise OSError(errno.EPROTO, f"unreadable answer: {type(exc).__name__}: {shown(str(exc))}")


def submit_on_own_connection(uri, spec):
    """On a helper thread: submit an oversized jobspec over a connection
    of its own (flux_send() may wait there as long as it must)."""
    try:
        handle = flux.Flux(uri)
    except OSError as exc:
        raise NotSent(exc) from exc
    return flux.job.submit_async(handle, spec).get_id()


class NotSent(OSError):
    """A request that never left (no connection): another target may take
    the job."""

    def __init__(self, exc):
        super().__init__(exc.errno, exc.strerror or str(exc))


class HelperAnswer:
    """The answer to a request a helper thread sent, as a future has it."""

    def __init__(self, result):
        self.result = result
        self.sent = not isinstance(result, NotSent)

    def get(self):
        if isinstance(self.result, BaseException):
            if not isinstance(self.result, OSError):
                raise OSError(errno.EPROTO, f"{type(self.result).__name__}: {self.result}")
            raise self.result
        return self.result

    get_id = get


class DelegatedJob:
    def __init__(self, args, target, doomed=None):
        self.id = int(args["id"])
        self.userid = args.get("userid")
        self.urgency = args.get("urgency")
        self.t_submit = args.get("t_submit")
        self.jobspec = args["jobspec"]
        self.target = target
        # Why the job cannot be delegated (a bad target), applied once its
        # eventlog shows it was never delegated before: in job.new the job
        # is NEW and cannot take an exception yet, and at plugin load it
        # may have been delegated under a registry that has changed.
        self.doomed = doomed
        self._phase = WAITING
        self.uri = None
        self.remote = None
        self.candidate = None
        self.attempts = []
        self.failures = []
        self.remote_id = None
        self.outcome = RemoteOutcome()
        self.watch = None
        self.watch_timer = None
        self.lost_since = None
        self.lost_reason = None
        self.checking = False
        self.recheck = False
        self.canceled_reason = None
        self.known_remote = {}  # uri -> ids of remote jobs it had there
        # The connection on which remote_id is known to be this job's (the
        # one it was submitted or found on, or checked over): on any other,
        # the id may belong to a stranger (a target replaced at its URI
        # numbers its jobs from the same start), so it is checked first.
        self.verified = None
        self.identity_check = None  # the one whose answer counts

    @property
    def name(self):
        return JobID(self.id).f58

    @property
    def phase(self):
        return self._phase

    @phase.setter
    def phase(self, value):
        self._phase = value
        if value in (DELEGATED, RELEASING, ENDED, RECOVERING):
            # Its remote job exists, or never will; or it waits (Recovery)
            # for a target that may take minutes to answer.
            runtime.admission.leave(self)

    @property
    def origin(self):
        """What the remote job records of this one (ORIGIN_ATTRIBUTE)."""
        return {"jobid": self.id, "t_submit": self.t_submit, "host": runtime.hostname}

    # -- failure -----------------------------------------------------------

    def fail(self, what, cancel_remote=True):
        """End the local job with a DelegationFailure (severity 0).  The
        remote job is canceled unless cancel_remote is False (it is not
        this job's, or it is gone)."""
        if self.phase == ENDED:
            log(syslog.LOG_DEBUG, f"{self.name}: after end: {what}")
            return
        previous, self.phase = self.phase, ENDED
        self.stop_following()
        if (
            cancel_remote
            and previous == DELEGATED
            and not self.outcome.ended
            and self.remote is not None
            and not self.remote.lost
        ):
            # Whatever went wrong, the remote job must not run on alone.
            self.cancel_remote(f"delegation failed: {what}")
        # Remote text may hold NULs or lone surrogates (a JSON escape).
        what = str(what).replace("\0", "\\0")
        what = what.encode("utf-8", "backslashreplace").decode("utf-8")
        log(syslog.LOG_ERR, f"{self.name}: {what}")
        jobtap.raise_exception(self.id, EXCEPTION_TYPE, 0, f"delegate: {what}")

    # -- waiting for the other dependencies --------------------------------

    def check_ready(self):
        """Read the job's eventlog from the job-manager (asynchronously):
        delegate when "delegated" is the only dependency left, or re-follow
        the remote job if this job was delegated before (plugin reload,
        instance restart)."""
        if self.phase != WAITING:
            return
        if self.urgency == 0 and self.doomed is None:
            return  # held: on_urgency checks again when released
        if self.checking:
            self.recheck = True
            return
        if not runtime.admission.admit(self):
            return  # its turn comes (Admission)
        self.checking = True
        future = runtime.handle.rpc(
            "job-manager.getattr", {"id": self.id, "attrs": ["eventlog"]}
        )
        then(future, self.on_eventlog, job=self)

    def on_eventlog(self, future):
        self.checking = False
        eventlog = future.get()["eventlog"]
        if self.phase != WAITING:
            return
        previous = find_delegation(eventlog)
        if previous is not None:
            # Delegated before (plugin reload, restart): follow it, even if
            # its target would not parse any more (registry changed).
            self.resume(previous)
        elif interrupted_submit(eventlog) is not None:
            # A submit was sent and its answer lost (restart, reload): the
            # target may have the job.  Look before submitting again.  The
            # attempt may have sent again for up to submit-timeout (a target
            # still starting), each send pending up to submit-timeout.
            attempt = interrupted_submit(eventlog)
            self.phase = RECOVERING
            for uri, jobid in delegations(eventlog):
                self.known_remote.setdefault(uri, set()).add(jobid)
            Recovery(
                self,
                attempt,
                attempt["timestamp"] + 2 * runtime.submit_timeout,
                known=self.known_remote.get(attempt["uri"], ()),
            ).start()
        elif self.doomed is not None:
            self.fail(self.doomed)
        elif not (outstanding_dependencies(eventlog) - {DEPENDENCY}):
            self.start()
        else:
            runtime.admission.leave(self)  # waits for its other dependencies
            if self.recheck:
                self.recheck = False
                self.check_ready()

    # -- choosing a target --------------------------------------------------

    def start(self):
        """Fetch the job's environment (only in J), then choose and submit."""
        self.phase = SUBMITTING
        future = flux.job.kvslookup.job_info_lookup(
            runtime.handle, self.id, keys=["J"]
        )
        then(future, self.on_J, job=self)

    def on_J(self, future):
        J = future.get()["J"]
        # J is the signed original jobspec; unwrapping it is local work.
        original = lib.flux_unwrap_string(J.encode(), False, ffi.NULL, ffi.NULL)
        if original == ffi.NULL:
            raise OSError(ffi.errno, "cannot unwrap the job's J")
        try:
            spec = json.loads(ffi.string(original).decode())
        finally:
            lib.free(original)
        environment = spec.get("attributes", {}).get("system", {}).get("environment")
        self.remote_spec = remote_jobspec(self.jobspec, environment, self.origin)
        target = self.target
        if target.kind == "policy":
            self.preflight([Candidate(c) for c in runtime.registry.clusters])
        elif target.kind == "label":
            self.preflight([Candidate(target.cluster)])
        else:
            resolve_target(self, target, self.on_resolved, self.fail)

    def on_resolved(self, uri):
        """An explicit URI (or job id): the one candidate, named by its
        registry label if the registry knows it."""
        if runtime.is_this_instance(uri):
            self.fail(f"{SELF_DELEGATION}: {shown(uri)} is this instance")
            return
        cluster = runtime.registry.by_uri(uri) or Cluster(uri, origin="explicit")
        self.preflight([Candidate(cluster)])

    def preflight(self, candidates):
        if self.phase != SUBMITTING:
            return
        metrics = runtime.policy_metrics(self.target.policy)
        Preflight(self, candidates, metrics, self.choose).start()

    def choose(self, candidates):
        """Order the candidates (policy), record the choice, and try them."""
        if self.phase != SUBMITTING:
            return
        policy = self.target.policy
        try:
            if policy is not None and policy not in runtime.policies:
                raise PolicyError(f"policy '{policy}' is no longer configured")
            if policy is None:
                order = list(candidates)
            else:
                order = apply_policy(
                    runtime.policies[policy],
                    policy,
                    self.target.policy_arg,
                    JobView(self.id, self.userid, self.jobspec),
                    candidates,
                )
        except PolicyError as exc:
            self.record_choice(policy, candidates, [])
            self.fail(str(exc))
            return
        usable = [c for c in order if c.usable]
        self.record_choice(policy, candidates, usable)
        if not usable:
            self.fail(no_target_message(candidates, order))
            return
        self.attempts = usable
        self.failures = []
        self.try_next()

    def record_choice(self, policy, candidates, order):
        """Provenance: every candidate with its verdict or metric, and the
        order in which they will be tried (the first is the choice)."""
        context = {
            "candidates": [c.record() for c in candidates],
            "order": [c.name for c in order],
            "choice": order[0].name if order else None,
        }
        if policy is not None:
            context["policy"] = policy + (
                f":{self.target.policy_arg}" if self.target.policy_arg else ""
            )
        jobtap.post_event(self.id, "delegate-choice", context)

    # -- submitting remotely -----------------------------------------------

    def try_next(self):
        candidate = self.attempts.pop(0)
        self.candidate = candidate
        self.uri = candidate.uri
        self.remote = candidate.remote
        self.outcome = RemoteOutcome()
        self.submit_deadline = time.time() + runtime.submit_timeout
        self.send_submit()

    def send_submit(self):
        if self.remote.lost:
            self.failover(f"cannot connect to {self.uri}: {self.remote.lost}")
            return
        attempt = Submission(self, self.remote, self.uri)
        self.submission = attempt
        attempt.send()

    def on_submit_timeout(self, attempt):
        """No answer in time.  The target may yet create the job: trying
        another target could run it twice, so the job fails here, and a job
        created late is canceled (Submission.on_answer)."""
        if attempt is not self.submission or self.phase != SUBMITTING:
            return
        if attempt.outgoing.withdraw():
            # Still queued behind requests the target has not read: nothing
            # was sent, so another target may take the job.
            self.failover(
                f"submit to {self.uri} failed: the target read no request"
                f" within {runtime.submit_timeout:g}s"
            )
            return
        self.fail(
            f"submit to {self.uri} failed: no answer within"
            f" {runtime.submit_timeout:g}s (not tried elsewhere: the target may"
            " still create the job, which would then be canceled)"
        )

    def on_submit_error(self, attempt, exc, sent=True):
        if attempt is not self.submission:
            return
        if self.phase == ENDED and sent and exc.errno in CONNECTION_ERRORS:
            # Ended meanwhile (canceled): whatever the submit made must go.
            self.recover_submit(attempt)
            return
        if self.phase != SUBMITTING:
            return
        if not sent:
            # Never sent (the connection broke first): try elsewhere.
            self.failover(f"submit to {self.uri} failed: {exc.strerror or exc}")
            return
        if exc.errno == errno.ENOSYS and time.time() < self.submit_deadline:
            # The target is still starting (no job-ingest yet): try again.
            self.retry_timer = Timer(1.0, guard(lambda: self.retry_submit(attempt), self))
            return
        if exc.errno in CONNECTION_ERRORS:
            # The request may have reached the target before the break:
            # look for the job there once it answers again.
            log(syslog.LOG_INFO, f"{self.name}: submit to {self.uri}: {exc.strerror or exc}")
            self.phase = RECOVERING
            self.recover_submit(attempt)
            return
        self.failover(f"submit to {self.uri} failed: {exc.strerror or exc}")

    def recover_submit(self, attempt):
        """Look on the target for what a submit cut off by a broken
        connection made; it was pending until submit-timeout after it was
        sent, at the most."""
        interrupted = {"uri": attempt.uri, "label": self.candidate.label, "timestamp": attempt.sent}
        Recovery(
            self,
            interrupted,
            attempt.sent + runtime.submit_timeout,
            known=self.known_remote.get(attempt.uri, ()),
        ).start()

    def retry_submit(self, attempt):
        if attempt is self.submission and self.phase == SUBMITTING:
            self.send_submit()

    def failover(self, reason, started=None):
        """This attempt failed for sure (no remote job runs): note it in the
        eventlog and try the next candidate, or fail with all attempts.
        started: whether the remote job of this attempt had started (None:
        there was none)."""
        candidate = self.candidate
        self.failures.append((candidate, reason))
        if not self.attempts:
            if len(self.failures) == 1:
                self.fail(reason)
            else:
                self.fail(
                    "all targets failed: "
                    + "; ".join(f"{c.describe()}: {r}" for c, r in self.failures)
                )
            return
        context = {"uri": candidate.uri, "reason": reason, "next": self.attempts[0].name}
        if candidate.label:
            context["label"] = candidate.label
        if started is not None:
            context["started"] = started
        jobtap.post_event(self.id, "delegate-failover", context)
        log(syslog.LOG_INFO, f"{self.name}: {candidate.describe()}: {reason}; trying next")
        self.phase = SUBMITTING
        self.try_next()

    def on_submitted(self, attempt, remote_id):
        """The target accepted the job as remote_id."""
        self.remote_id = JobID(remote_id)
        self.phase = DELEGATED
        self.known_remote.setdefault(self.uri, set()).add(int(self.remote_id))
        context = {"jobid": int(self.remote_id), "uri": self.uri}
        if self.candidate.label:
            context["label"] = self.candidate.label
        jobtap.post_event(self.id, "delegated", context)
        log(
            syslog.LOG_INFO,
            f"{self.name}: delegated to {self.candidate.describe()} as {self.remote_id.f58}",
        )
        self.verified = self.remote
        self.follow(self.remote)

    def adopt(self, recovery, remote_id):
        """The job an interrupted submit made was found: follow it."""
        self.remote_id = JobID(remote_id)
        self.uri = recovery.uri
        self.phase = DELEGATED
        self.known_remote.setdefault(self.uri, set()).add(int(self.remote_id))
        context = {"jobid": int(self.remote_id), "uri": self.uri, "recovered": True}
        if recovery.label:
            context["label"] = recovery.label
        jobtap.post_event(self.id, "delegated", context)
        log(
            syslog.LOG_INFO,
            f"{self.name}: found {self.remote_id.f58} on {self.uri}, made by a"
            " submit whose answer was lost; following it",
        )
        self.verified = recovery.remote
        self.follow(recovery.remote)

    def resume(self, delegation):
        """Follow again a remote job delegated before a reload/restart."""
        self.phase = DELEGATED
        self.uri = delegation.get("uri")
        self.remote_id = JobID(delegation.get("jobid"))
        log(
            syslog.LOG_INFO,
            f"{self.name}: following {self.remote_id.f58} on {self.uri} again",
        )
        self.lost_since = time.time()
        self.lost_reason = "the source reloaded"
        runtime.connections.get(self.uri, self.reattach, self.reattach_failed, job=self)

    # -- following the remote job ------------------------------------------

    def follow(self, remote):
        if self.phase != DELEGATED:
            return
        self.remote = remote
        if remote.lost:
            self.connection_lost(remote, remote.lost)
            return
        remote.listeners.add(self)
        watch = remote.request(
            1024,
            lambda h: flux.job.event_watch_async(h, self.remote_id),
            self.on_remote_event,
            job=self,
        )
        if isinstance(watch.future, FailedRequest):
            # Failed as it was sent, before self.watch was set: its answer
            # was ignored.
            self.connection_lost(remote, str(watch.future.error))
            return
        self.watch = watch
        if not watch.sent:
            log(
                syslog.LOG_DEBUG,
                f"{self.name}: watch queued: {remote.unanswered} bytes unanswered on {self.uri}",
            )
        # A target answers a watch at once with the eventlog so far.  One
        # that never does (a hung job-info, a request lost as the module
        # was reloaded) would leave the job pending for ever: give up on
        # that watch and follow again, within reconnect-timeout.
        self.watch_timer = Timer(
            runtime.submit_timeout, guard(lambda: self.watch_unanswered(watch), self)
        )

    def watch_unanswered(self, watch):
        if self.phase != DELEGATED or self.watch is not watch:
            return
        if watch.sent:
            answered(watch.future)  # given up: its bytes no longer count
        remote = self.remote
        self.stop_following()
        self.connection_lost(
            remote,
            f"its job-info did not answer within {runtime.submit_timeout:g}s",
        )

    def stop_watch_timer(self):
        timer, self.watch_timer = self.watch_timer, None
        if timer is not None:
            timer.cancel()

    def stop_following(self):
        self.stop_watch_timer()
        watch, self.watch = self.watch, None
        if self.remote is not None:
            self.remote.listeners.discard(self)
        if watch is None or watch.withdraw():  # not sent yet: dropped
            return
        if self.remote is not None:
            self.remote.cancel_watch(watch.future)

    def connection_lost(self, remote, reason):
        """The remote job cannot be followed for now (target restarting,
        ssh dropped, its job-info gone...).  It may well live on: follow it
        again once its target answers, for up to reconnect-timeout."""
        if remote is not self.remote or self.phase != DELEGATED:
            return
        self.stop_watch_timer()
        self.watch = None
        remote.listeners.discard(self)
        self.lost_since = self.lost_since or time.time()
        self.lost_reason = reason
        if time.time() - self.lost_since >= runtime.reconnect_timeout:
            self.fail(
                f"lost contact with remote job {self.remote_id.f58} on {self.uri}"
                f" for {runtime.reconnect_timeout:g}s: {reason}"
            )
            return
        log(
            syslog.LOG_INFO,
            f"{self.name}: lost contact with {self.remote_id.f58} on {self.uri}"
            f" ({reason}); reconnecting",
        )
        self.schedule_reconnect()

    def schedule_reconnect(self):
        self.reconnect_timer = Timer(runtime.reconnect_interval, guard(self.reconnect, self))

    def reconnect(self, *unused):
        if self.phase == DELEGATED:
            runtime.connections.get(
                self.uri, self.reattach, self.reattach_failed, job=self
            )

    def reattach(self, remote):
        """Connected again (or after a reload): make sure remote_id is still
        this job's there, then watch it again."""
        if self.phase != DELEGATED:
            return
        if remote is self.verified:
            self.watch_again(remote)
            return
        self.remote = remote
        remote.listeners.add(self)  # connection_lost() if it goes meanwhile
        self.stop_watch_timer()
        self.watch_timer = Timer(
            runtime.submit_timeout,
            guard(lambda: self.identity_unanswered(remote), self),
        )
        check = self.identity_check = object()
        check_identity(
            remote, self.remote_id, self.origin,
            lambda verdict, why: self.on_identity(remote, verdict, why, check), job=self,
        )

    def identity_unanswered(self, remote):
        if self.phase == DELEGATED and self.remote is remote and self.verified is not remote:
            self.identity_check = None  # a late answer no longer counts
            self.connection_lost(
                remote, f"it did not answer within {runtime.submit_timeout:g}s"
            )

    def on_identity(self, remote, verdict, why, check):
        if (
            self.phase != DELEGATED
            or self.remote is not remote
            or remote.lost
            or check is not self.identity_check
        ):
            return  # superseded, or connection_lost() takes it from here
        self.identity_check = None
        self.stop_watch_timer()
        where = f"remote job {self.remote_id.f58} on {self.uri}"
        if verdict == "same":
            self.verified = remote
            self.watch_again(remote)
        elif verdict == "gone":
            self.fail(
                f"{where} no longer exists (purged, or the target was replaced"
                " or restarted without its state)",
                cancel_remote=False,
            )
        elif verdict == "other":
            self.fail(
                f"{where} is not this job's: the target is a different"
                f" instance now ({why}); the remote job this job ran as is"
                " lost, and the stranger is left alone",
                cancel_remote=False,
            )
        else:
            self.connection_lost(remote, why)

    def watch_again(self, remote):
        log(syslog.LOG_DEBUG, f"{self.name}: watching {self.remote_id.f58} on {self.uri} again")
        self.outcome = RemoteOutcome()  # the watch replays the whole eventlog
        self.follow(remote)  # lost_since is cleared by the first event

    def reattach_failed(self, message):
        if self.phase != DELEGATED:
            return
        if time.time() - self.lost_since < runtime.reconnect_timeout:
            self.schedule_reconnect()
            return
        self.fail(
            f"lost contact with remote job {self.remote_id.f58} on {self.uri}"
            f" ({self.lost_reason}), and cannot reconnect: {message}"
        )

    def on_remote_event(self, future):
        if self.phase != DELEGATED or self.watch is None or self.watch.future is not future:
            log(syslog.LOG_DEBUG, f"{self.name}: answer to a watch given up on, ignored")
            return  # a watch given up on (its late answers, its ENODATA)
        self.stop_watch_timer()  # answered
        try:
            event = future.get_event()
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.fail(
                    f"remote job {self.remote_id.f58} no longer exists on"
                    f" {self.uri} (purged, or the instance restarted without"
                    " its state)"
                )
            elif exc.errno == errno.EPERM:
                self.fail(
                    f"cannot follow remote job {self.remote_id.f58} on"
                    f" {self.uri}: {exc.strerror or exc}"
                )
            else:
                # Anything else is the target going away or coming back
                # (a target shutting down answers ENOSYS before its
                # connection closes): follow again once it answers.
                self.connection_lost(self.remote, exc.strerror or str(exc))
            return
        self.lost_since = None  # in contact again
        if event is None:
            self.conclude()
            return
        self.outcome.update(event.name, event.context)
        if self.requeue() and not self.outcome.allocated:
            # The target cannot allocate: the remote job will never start,
            # so another target may take the job at once.
            self.stop_following()
            self.phase = SUBMITTING
            self.failover(
                describe_remote_exception(self.remote_id.f58, self.uri, self.outcome.exception),
                started=False,
            )
        elif self.outcome.ended:
            self.conclude()

    def requeue(self):
        """Whether the remote job's end calls for running the job elsewhere:
        its allocation failed (an alloc exception: the target could not
        allocate it, or lost what it had allocated), another candidate is
        left, and, if it had been allocated (it may have started), the job
        did not opt out with -S delegate-requeue=false.  As Slurm requeues
        a job on node failure; other exceptions (a cancel, a timeout, the
        job's own failure) end the job."""
        exception = self.outcome.exception
        if exception is None or exception.get("type") != "alloc" or not self.attempts:
            return False
        return not self.outcome.allocated or requeue_allowed(self.jobspec)

    def conclude(self):
        """The remote job has ended: end the local one the same way."""
        if self.phase != DELEGATED:
            return
        self.stop_following()
        exception = self.outcome.exception
        if self.requeue():
            # It may have run, and has ended there: only now may it run
            # elsewhere.
            self.phase = SUBMITTING
            self.failover(
                describe_remote_exception(self.remote_id.f58, self.uri, exception),
                started=self.outcome.started,
            )
        elif exception is not None:
            note = describe_remote_exception(self.remote_id.f58, self.uri, exception)
            if (
                exception.get("type") == "alloc"
                and self.outcome.allocated
                and self.attempts
                and not requeue_allowed(self.jobspec)
            ):
                note += "; not requeued: the job opted out (delegate-requeue=false)"
            self.fail(note)
        elif self.outcome.wait_status is None:
            self.fail(
                f"remote job {self.remote_id.f58} on {self.uri} ended"
                " without an exit status"
            )
        else:
            self.release(self.outcome.wait_status)

    def release(self, wait_status):
        """Let the local job finish with wait_status, using no resources
        (alloc-bypass, exec test mode).

        R goes to the KVS first, so that the alloc event can follow the
        job's arrival in SCHED at once.  With a KVS commit in between (as
        alloc-bypass.so does it), a plugin reload in that moment would
        leave the job in SCHED for ever, its alloc event never posted.
        """
        self.phase = RELEASING
        self.wait_status = wait_status
        self.R = local_R(runtime.hostname)
        self.R_given = False
        self.releasing_now = False
        txn = flux.kvs.KVSTxn(runtime.handle, JobID(self.id).kvs)
        txn.put("R", self.R)
        then(txn.commit_async(), self.on_R_committed, job=self)

    def on_R_committed(self, future):
        """Order matters: the phase is set first, because removing the
        dependency runs the next state callbacks (job.state.sched, below)
        before it returns, as a rule."""
        future.get()
        if self.phase != RELEASING:
            return  # ended meanwhile
        jobtap.jobspec_update(self.id, release_updates(self.wait_status))
        jobtap.set_flag(self.id, "alloc-bypass")
        self.releasing_now = True
        try:
            jobtap.dependency_remove(self.id, DEPENDENCY)
        finally:
            self.releasing_now = False
        if self.R_given:
            self.post_alloc()

    # -- jobtap callbacks for this job -------------------------------------

    def on_depend(self, args):
        self.check_ready()

    def on_dependency_removed(self, args):
        self.check_ready()

    def on_sched(self, args):
        """The released job reaches SCHED: give it R (alloc-bypass).  The
        job-manager takes R when this callback returns, so the alloc event
        follows it: at once after dependency_remove() returns, or, if SCHED
        came later (a priority plugin took its time), on the next pass of
        the reactor."""
        if self.phase != RELEASING or self.R_given:
            return None
        self.R_given = True
        if not self.releasing_now:
            self.alloc_timer = Timer(0.0, guard(self.post_alloc, self))
        return {"R": self.R}

    def post_alloc(self):
        jobtap.post_event(self.id, "alloc", {"bypass": True})

    def on_cleanup(self, args):
        """The local job ends.  If that is not our doing, the remote job
        (or the submit in flight) is canceled: nothing runs on its own."""
        if self.phase in (RELEASING, ENDED):
            self.phase = ENDED
            return
        reason = local_end_reason(args, self.name)
        previous, self.phase = self.phase, ENDED
        self.canceled_reason = reason
        if previous == DELEGATED:
            self.stop_following()
            self.cancel_remote(reason)

    def on_inactive(self, args):
        self.stop_following()
        runtime.jobs.pop(self.id, None)
        runtime.admission.leave(self)

    def on_urgency(self, args):
        """A held job (urgency 0) is not delegated until it is released."""
        self.urgency = args.get("urgency", self.urgency)
        if self.urgency != 0:
            self.check_ready()

    def cancel_remote(self, reason):
        """Cancel the remote job: now, or, if the connection is down, as soon
        as it is back.  It must not run on alone."""
        RemoteCancel(self, reason).start()


class RemoteCancel:
    """Cancel a remote job, retrying while its target cannot be reached
    (for up to reconnect-timeout); the local job may be gone by then.

    An accepted cancel is not the end of it: a target's job-manager answers
    before its exception event is committed, and one shutting down may
    lose that commit (the job comes back pending after the restart).  So
    the remote job is watched until it is cleaned up, and if the target
    goes away first, canceled again once it is back.
    """

    def __init__(self, job, reason):
        self.job = job
        self.owner = runtime
        self.uri = job.uri
        self.remote_id = job.remote_id
        self.id = job.id  # for guard(), as a connection listener
        self.remote = None  # where the canceled job is watched
        self.reason = reason
        self.deadline = time.time() + runtime.reconnect_timeout
        self.done = False

    def start(self):
        log(syslog.LOG_INFO, f"{self.job.name}: canceling {self.remote_id.f58} on {self.uri}")
        remote = self.job.remote
        if remote is not None and not remote.lost:
            self.send(remote)
        else:
            self.connect()

    def connect(self, *unused):
        self.owner.connections.get(self.uri, self.send, self.retry)

    def retry(self, message):
        if time.time() < self.deadline:
            self.timer = Timer(
                self.owner.reconnect_interval, guard(self.connect, owner=self.owner), self.owner
            )
            return
        self.owner.log(
            syslog.LOG_ERR,
            f"{self.job.name}: could not cancel remote job {self.remote_id.f58}"
            f" on {self.uri}: {message}; it may still run there",
        )

    def send(self, remote):
        """Cancel over remote, once the remote job is known to be this
        job's there (never a stranger's that took its id)."""
        if remote is self.job.verified:
            self.send_cancel(remote)
            return
        check_identity(
            remote, self.remote_id, self.job.origin,
            lambda verdict, why: self.on_identity(remote, verdict, why),
        )

    def on_identity(self, remote, verdict, why):
        if verdict == "same":
            self.job.verified = remote
            self.send_cancel(remote)
        elif verdict == "error":
            self.retry(why)
        else:
            self.done = True
            self.owner.log(
                syslog.LOG_INFO,
                f"{self.job.name}: not canceling {self.remote_id.f58} on {self.uri}:"
                + (" it no longer exists" if verdict == "gone" else f" it is not this job's ({why})"),
            )

    def send_cancel(self, remote):
        remote.request(
            1024,
            lambda h: flux.job.cancel_async(h, self.remote_id, self.reason),
            lambda future: self.on_answer(future, remote),
        )

    def on_answer(self, future, remote):
        try:
            future.get()
        except OSError as exc:
            if exc.errno in CONNECTION_ERRORS or exc.errno == errno.ENOSYS:
                self.retry(exc.strerror or str(exc))
            else:  # e.g. the remote job is inactive already
                self.owner.log(
                    syslog.LOG_INFO,
                    f"{self.job.name}: cancel of {self.remote_id.f58} on {self.uri}:"
                    f" {exc.strerror or exc}",
                )
            return
        remote.listeners.add(self)  # connection_lost() if it goes first
        self.remote = remote
        remote.request(
            1024,
            lambda h: flux.job.event_watch_async(h, self.remote_id),
            self.on_remote_event,
        )

    def connection_lost(self, remote, reason):
        remote.listeners.discard(self)
        if not self.done and remote is self.remote:
            self.remote = None
            self.retry(reason)

    def on_remote_event(self, future):
        """Until the remote job's clean event (or the end of its eventlog)."""
        if self.done:
            return
        try:
            event = future.get_event()
        except OSError as exc:
            if self.remote is not None:
                self.remote.listeners.discard(self)
                self.remote = None
            if exc.errno not in (errno.ENOENT, errno.EPERM):  # not purged
                self.retry(exc.strerror or str(exc))  # the target went away
            return
        if event is None or event.name == "clean":
            self.done = True
            if self.remote is not None:
                self.remote.listeners.discard(self)
            if event is not None and self.remote is not None:
                self.remote.cancel_watch(future)


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

    attempt: {"uri", "label", "timestamp"} of the submit; 'settled' is when
    it can no longer be pending.  'known' are remote jobs this job had
    before on that target (an earlier attempt): never adopted.
    """

    def __init__(self, job, attempt, settled, known=()):
        self.job = job
        self.id = job.id  # guard() reports errors against it
        self.uri = attempt["uri"]
        self.label = attempt["label"]
        self.since = attempt["timestamp"]
        self.settled = settled
        self.known = {int(jobid) for jobid in known}
        self.remote = None
        self.generation = 0  # answers of an abandoned search are ignored
        self.timer = None
        self.deadline = None

    def start(self):
        wait = self.settled - time.time()
        log(
            syslog.LOG_INFO,
            f"{self.job.name}: a submit to {self.uri} was interrupted; looking"
            " for its job there" + (f" in {wait:.1f}s" if wait > 0 else ""),
        )
        self.deadline = time.time() + max(wait, 0.0) + runtime.reconnect_timeout
        self.wait(max(wait, 0.0), self.connect)

    def wait(self, seconds, then_call):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = Timer(seconds, guard(then_call, self))

    @property
    def wanted(self):
        return self.job.phase in (RECOVERING, ENDED)

    def connect(self):
        if self.wanted:
            runtime.connections.get(self.uri, self.search, self.retry, job=self)

    def retry(self, message):
        """Something failed or did not answer: search again from the start
        after reconnect-interval, until the deadline."""
        self.generation += 1
        if time.time() < self.deadline:
            self.wait(runtime.reconnect_interval, self.connect)
            return
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
        self.wait(
            runtime.submit_timeout,
            lambda: generation == self.generation
            and self.retry(f"no answer within {runtime.submit_timeout:g}s"),
        )

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
        self.found_jobs += response.get("jobs", [])
        if self.first and "version" not in response:
            self.check_candidates()
            return
        self.first = False
        self.arm()
        future.reset()  # the next response comes to this callback again

    def check_candidates(self):
        jobs = [j for j in self.found_jobs if int(j["id"]) not in self.known]
        jobs.sort(key=lambda j: j.get("t_submit", 0.0), reverse=True)  # newest first
        self.candidates = [int(j["id"]) for j in jobs]
        self.check_next()

    def check_next(self):
        if not self.candidates:
            if self.timer is not None:
                self.timer.cancel()
            self.not_found()
            return
        jobid = self.candidates.pop(0)
        self.ask(
            lambda h: flux.job.kvslookup.job_info_lookup(h, jobid, keys=["jobspec"]),
            lambda future: self.on_jobspec(future, jobid),
        )

    def on_jobspec(self, future, jobid):
        try:
            jobspec = future.get_decode()["jobspec"]
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EPERM):  # purged, not ours
                self.check_next()
            else:
                self.retry(f"looking up job {JobID(jobid).f58}: {exc.strerror or exc}")
            return
        if same_origin(origin_of(jobspec), self.job.origin):
            self.timer.cancel()
            self.found(jobid)
        else:
            self.check_next()

    def found(self, remote_id):
        job = self.job
        if job.phase == RECOVERING:
            job.adopt(self, remote_id)
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
        job.start()


def local_end_reason(args, name):
    """Why the local job ended, as a reason for canceling the remote one."""
    event = args.get("end_event") or {}
    context = event.get("context") or {}
    if event.get("name") == "exception":
        note = context.get("note") or ""
        return (
            f"{context.get('type', 'exception')} in the source instance"
            f" (job {name})" + (f": {note}" if note else "")
        )
    return f"job {name} ended in the source instance"


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
            if runtime.is_this_instance(c.uri):
                c.verdict, c.reason = "infeasible", f"this instance itself: {SELF_DELEGATION}"
        asked = [c for c in self.candidates if c.verdict is None]
        if not asked:
            self.finish()
            return
        for c in asked:
            self.waiting[id(c)] = [set(), None, []]  # queries, timer, requests
        for c in asked:
            runtime.connections.get(
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
            wanted.append(("feasibility", nbytes,
                           lambda h: h.rpc("feasibility.check", {"jobspec": spec})))
        if "pending" in self.metrics:
            wanted.append(("pending", 1024, lambda h: h.rpc("job-list.job-stats", {})))
        if "match_time" in self.metrics:
            wanted.append(
                ("match_time", 1024, lambda h: h.rpc("sched-fluxion-resource.stats-get"))
            )
        if not wanted:
            self.settle(c, c.verdict, c.reason)
            return
        outstanding, _, outgoing = self.waiting[id(c)]
        outstanding.update(name for name, _, _ in wanted)
        self.waiting[id(c)][1] = Timer(
            runtime.preflight_timeout, guard(lambda: self.expire(c), self.job)
        )
        for name, nbytes, send in wanted:
            outgoing.append(remote.request(
                nbytes, send, lambda f, c=c, name=name: self.answered(c, name, f), self.job
            ))

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
        wait = f"{runtime.preflight_timeout:g}s"
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
                c, "unreachable",
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


# ---------------------------------------------------------------------------
# Resolving a target to a URI (asynchronously where it needs a lookup).
# ---------------------------------------------------------------------------


def resolve_target(job, target, on_uri, on_error):
    """Call on_uri(uri) with the URI to connect to, or on_error(message).
    Errors in the callbacks are reported against job."""
    value = shown(target.value)
    if target.kind == "uri":
        try:
            on_uri(check_local_or_ssh(target.value))
        except ValueError as exc:
            on_error(f"cannot use {value}: {exc}")
        return
    if target.kind == "scheme" and target.scheme == "pid":
        # flux's own pid resolver: a few reads of /proc on this host.
        try:
            resolver = importlib.import_module("flux.uri.resolvers.pid").URIResolver()
            found = resolver.resolve(flux.uri.URIResolverURI(target.value))
            uri = check_local_or_ssh(str(flux.uri.JobURI(found).local))
        except OSError as exc:
            why = "no such process" if exc.errno == errno.ENOENT else exc.strerror or exc
            on_error(f"cannot use {value}: {why} on {runtime.hostname}")
            return
        except Exception as exc:  # pylint: disable=broad-except
            on_error(f"cannot use {value}: {exc or type(exc).__name__}")
            return
        on_uri(uri)
        return
    if target.kind == "jobid":
        try:
            jobids = target.jobids or parse_jobid_path(
                flux.uri.URIResolverURI(target.value).path
            )
        except ValueError as exc:
            on_error(f"cannot use {value}: {exc}")
            return
        JobidResolution(job, value, jobids, on_uri, on_error).step(runtime.handle)
        return
    on_error(
        f"unknown URI scheme {shown(target.scheme)} in {value}"
        " (delegate takes local://, ssh://, pid: and job ids; resolve other"
        " schemes with 'flux uri' first)"
    )


class JobidResolution:
    """Resolve a job id (or a path of them) to the URI of the Flux instance
    that job runs, the way flux's jobid URI resolver does (job-list's
    "uri" annotation of a running job), but with futures: the resolver
    itself would block the job-manager."""

    def __init__(self, job, value, jobids, on_uri, on_error):
        self.job = job
        self.value = value
        self.jobids = list(jobids)
        self.on_uri = on_uri
        self.on_error = on_error
        self.hostname = None
        self.timer = None

    def step(self, handle):
        jobid = self.jobids[0]
        future = flux.job.job_list_id(handle, jobid, attrs=["state", "annotations"])
        then(future, self.on_job, job=self.job)

    def step_into(self, remote):
        """The next job of the path, inside the instance reached: asked as
        any request to a target is (it may stop reading, or go away), and
        given up after submit-timeout."""
        jobid = self.jobids[0]
        self.timer = Timer(
            runtime.submit_timeout, guard(lambda: self.unanswered(jobid), self.job)
        )
        remote.request(
            1024,
            lambda h: flux.job.job_list_id(h, jobid, attrs=["state", "annotations"]),
            self.on_job,
            job=self.job,
        )

    def unanswered(self, jobid):
        self.timer = None
        self.jobids = []  # a late answer is ignored
        self.on_error(
            f"cannot use {self.value}: {self.resolved} did not answer about job"
            f" {jobid.f58} within {runtime.submit_timeout:g}s"
        )

    def on_job(self, future):
        if not self.jobids:
            return  # given up on (unanswered())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        jobid = self.jobids.pop(0)
        try:
            info = answer_of(future.get_jobinfo)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.on_error(f"cannot use {self.value}: job {jobid.f58} not found")
            else:
                self.on_error(
                    f"cannot use {self.value}: looking up job {jobid.f58}:"
                    f" {exc.strerror or exc}"
                )
            return
        if info.state != "RUN":
            self.on_error(
                f"cannot use {self.value}: job {jobid.f58} is not running"
                f" (state {info.state})"
            )
            return
        uri = getattr(info.user, "uri", None)
        if not uri:
            self.on_error(
                f"cannot use {self.value}: job {jobid.f58} runs no Flux instance"
                " (it has no URI)"
            )
            return
        job_uri = flux.uri.JobURI(str(uri))
        # On this host, connect directly rather than through ssh.
        if job_uri.netloc in ("", runtime.hostname, self.hostname):
            resolved = job_uri.local
        else:
            resolved = job_uri.remote
        self.hostname = job_uri.netloc or self.hostname
        if not self.jobids:
            self.on_uri(resolved)
            return
        # A job inside that instance: look it up there.
        self.resolved = resolved
        runtime.connections.get(resolved, self.step_into, self.connect_failed, job=self.job)

    def connect_failed(self, message):
        self.on_error(f"cannot use {self.value}: cannot connect to {self.resolved}: {message}")


# ---------------------------------------------------------------------------
# Entry points called by delegate.so.
# ---------------------------------------------------------------------------


def claim(args, target, doomed=None):
    """Take the job on: hold it with the "delegated" dependency."""
    job = runtime.jobs.get(int(args["id"]))
    if job is None:
        job = DelegatedJob(args, target, doomed)
        # State first: the calls below can run callbacks for this job.
        runtime.jobs[job.id] = job
        jobtap.job_attach(job.id, job)
        jobtap.subscribe(job.id)
    jobtap.dependency_add(job.id, DEPENDENCY)
    # At submit the job is NEW and its other dependencies are not all
    # recorded yet: job.state.depend starts the check.  A job already in
    # DEPEND (plugin load, restart) is checked now.
    if args.get("state") == flux.constants.FLUX_JOB_STATE_DEPEND:
        job.check_ready()
    return job


def check_owner(args):
    userid = args.get("userid")
    if userid is not None and int(userid) != os.getuid():
        raise ValueError(
            "only the instance owner can delegate jobs"
            f" (job owner {userid}, instance owner {os.getuid()})"
        )


def system_delegate(args):
    """The job's -S system.delegate=POLICY, the C delegate plugin's way."""
    return args["jobspec"].get("attributes", {}).get("system", {}).get("delegate")


def parse_job_target(value):
    """parse_target() against the current registry; on a miss, re-read the
    user's registry file once (it may have just been edited) and retry."""
    runtime.refresh_user_registry()
    names = runtime.policy_names()
    try:
        return parse_target(value, runtime.registry, names, runtime.default_policy)
    except ValueError:
        runtime.refresh_user_registry(force=True)
        return parse_target(value, runtime.registry, names, runtime.default_policy)


def on_dependency(args):
    """job.dependency.delegate: take the job on, or reject it.  With no
    value, -S system.delegate (or else the default policy) chooses.

    At submit a bad value rejects the job.  A job already waiting (plugin
    load, instance restart) is always taken on: it may have been delegated
    before, under a registry that has changed since.
    """
    at_submit = args.get("state") == flux.constants.FLUX_JOB_STATE_NEW
    existing = runtime.jobs.get(int(args["id"]))
    if existing is not None:
        if at_submit:
            # A second delegate dependency: which one would be meant?
            raise ValueError(
                "a job takes one delegate dependency; this one has more"
            )
        # Plugin load: a job already waiting is taken on once.
        claim(args, existing.target, existing.doomed)
        return None
    value = (args.get("dependency") or {}).get("value")
    also = system_delegate(args)
    if at_submit and value and also is not None:
        raise ValueError(
            "use either --dependency=delegate:TARGET or -S system.delegate=TARGET,"
            f" not both (delegate:{shown(value)}, system.delegate={shown(also)})"
        )
    if not value and also is not None:
        value = also
    try:
        target = parse_job_target(value)
        check_owner(args)
        if target.kind == "uri" and runtime.is_this_instance(target.value):
            raise ValueError(f"{SELF_DELEGATION}: {shown(target.value)} is this instance")
    except ValueError as exc:
        if args.get("state") == flux.constants.FLUX_JOB_STATE_NEW:
            raise
        claim(args, None, doomed=str(exc))
        return None
    claim(args, target)
    return None


def on_job_new(args):
    """job.new of a job with -S system.delegate=POLICY (delegate.so passes
    only those): the C delegate plugin's convention.  The job is NEW and
    may not take an exception yet, so a bad value fails it once it is in
    DEPEND, with DelegationFailure, as the C plugin does."""
    jobid = int(args["id"])
    if jobid in runtime.jobs:
        return None  # also a delegate dependency: already taken on
    state = args.get("state")
    if state not in (flux.constants.FLUX_JOB_STATE_NEW, flux.constants.FLUX_JOB_STATE_DEPEND):
        log(
            syslog.LOG_WARNING,
            f"{JobID(jobid).f58}: has system.delegate but was submitted before"
            " delegate.so was loaded: not delegated",
        )
        return None
    value = system_delegate(args)
    target, doomed = None, None
    try:
        if not isinstance(value, str):
            raise ValueError(f"system.delegate must be a string, not {shown(value)}")
        target = parse_job_target(value)
        check_owner(args)
    except ValueError as exc:
        doomed = str(exc)
    except Exception as exc:  # pylint: disable=broad-except
        # job.new cannot fail a job (flux ignores its result): whatever
        # went wrong, the job is taken on and fails once it can.
        runtime.log_exception(f"{JobID(jobid).f58}: job.new")
        doomed = f"handler error: {type(exc).__name__}: {exc}"
    claim(args, target, doomed)
    return None


JOB_CALLBACKS = {
    "job.state.depend": DelegatedJob.on_depend,
    "job.event.urgency": DelegatedJob.on_urgency,
    # A submit rejected after the job was taken on (e.g. by a later
    # dependency) is destroyed without becoming inactive.
    "job.destroy": DelegatedJob.on_inactive,
    "job.event.dependency-remove": DelegatedJob.on_dependency_removed,
    "job.state.sched": DelegatedJob.on_sched,
    "job.state.cleanup": DelegatedJob.on_cleanup,
    "job.state.inactive": DelegatedJob.on_inactive,
}


#: The job topics wanted for jobs this handler took on (delegate.so passes
#: no others: a delegated job sees a score of events).
JOB_TOPICS = tuple(JOB_CALLBACKS)


def callback(topic, args, job):
    """Every jobtap callback delegate.so passes on arrives here."""
    if topic == "job.dependency.delegate":
        return on_dependency(args)
    if topic == "job.new":
        return on_job_new(args)
    if topic == "conf.update":
        runtime.configure(args.get("conf") or {})
        return None
    if job is not None:
        method = JOB_CALLBACKS.get(topic)
        return method(job, args) if method else None
    if topic == "plugin.query":
        return runtime.query()
    return None


def plugin_load(conf):
    global jobtap, runtime
    import delegate_jobtap

    jobtap = delegate_jobtap
    harden_bindings()
    # What is loaded now (modules, the bindings) stays: the collector need
    # not look at it again on every full pass, which would otherwise take
    # a good part of a second in the middle of a burst.  The runtime is
    # made after, so that it can be collected once unloaded.
    gc.freeze()
    runtime = Runtime(conf)
    runtime.start()


def plugin_unload():
    if runtime is not None:
        runtime.unload()
    # What this handler let go (jobs, futures, watchers refer to each other
    # in cycles) goes now, while the job-manager is not busy, rather than
    # at some later allocation in the middle of a callback.
    gc.unfreeze()
    gc.collect()
