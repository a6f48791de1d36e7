"""What a user writes after delegate: (or in -S system.delegate=...): a URI,
the job id of an instance running as a job here, a registry label, a
policy.  Parsed here, before any lookup or connection.
"""

import os
import urllib.parse

try:
    import flux
    import flux.uri
    from flux.job import JobID
except ImportError:  # pragma: no cover - unit tests without flux-core
    flux = None

from .names import BUILTIN_POLICIES, DEFAULT_POLICY
from .text import shown

#: Why a job is never sent to the instance it was submitted to: it would
#: wait there for itself.
SELF_DELEGATION = "a job is not delegated to the instance it was submitted to"


USAGE = (
    "use --dependency=delegate:URI with a Flux URI "
    "(local:///path/to/socket, ssh://host/path/to/socket) "
    "or the job id of a Flux instance running as a job here"
)


class Target:
    """What a delegate:VALUE dependency (or system.delegate) names, before
    any resolution.

    kind is "uri" (a URI flux_open() takes as it is), "jobid" (a job of
    this instance, or a path of jobs, running a Flux instance), "scheme"
    (another URI scheme, which this handler cannot open), "label" (a
    registry entry: cluster) or "policy" (a policy chooses among the
    registry's entries: policy, with its argument policy_arg).
    """

    def __init__(
        self, value, kind, scheme=None, jobids=None, cluster=None, policy=None, policy_arg=None
    ):
        self.value = value
        self.kind = kind
        self.scheme = scheme
        self.jobids = jobids or []
        self.cluster = cluster
        self.policy = policy
        self.policy_arg = policy_arg

    def __repr__(self):
        return f"Target({self.value!r}, kind={self.kind!r})"


def parse_target(value, registry=None, policies=BUILTIN_POLICIES, default_policy=None):
    """Parse the value of a delegate dependency (registry: a
    flux_delegate.registry.Registry, or None for none).

    The value is, in this order: empty (the default policy chooses among
    the registry's entries), a policy name (POLICY or POLICY:ARG), a label
    of the registry, a URI, or a job id.  Raises ValueError for a value that
    is wrong on its face (not any of these): such a submit is rejected.
    Anything that can only be found out by trying (an unknown scheme, a
    socket that is not there, a job that runs no instance, assign:N out of
    range) is left for later, and fails the job instead.
    """
    clusters = registry.clusters if registry is not None else []
    if value is None or value == "":
        if not clusters:
            raise ValueError(f"no delegation targets are configured: {USAGE}")
        return policy_target(value or "", default_policy or DEFAULT_POLICY)
    if not isinstance(value, str):
        raise ValueError(f"the target must be a string, not {shown(value)}: {USAGE}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"not a target (white space or control characters): {shown(value)}")
    if value.partition(":")[0] in policies:
        if not clusters:
            raise ValueError(
                "no delegation targets are configured for policy"
                f" {shown(value.partition(':')[0])} to choose from"
            )
        return policy_target(value, value)
    cluster = registry.by_label(value) if registry is not None else None
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
                f" (labels: {shown(', '.join(registry.labels() if registry is not None else []) or 'none')};"
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


def same_instance(uri, local_uri, hostname, stat=True):
    """Whether uri names the instance whose own socket is local_uri (its
    local-uri attribute), on the host hostname: that socket, directly or
    through ssh to this host.  What the plugin checks so that a job is never
    sent to the instance it was submitted to.  stat: also by the file (a
    link, another path to it); a stat of a path a user gave may block (a
    hung file system), so the job-manager's thread leaves it to the thread
    that connects."""
    if not uri or not local_uri or flux is None:
        return False
    try:
        theirs = flux.uri.JobURI(uri)
        mine = flux.uri.JobURI(local_uri)
        if theirs.scheme not in ("local", "ssh"):
            return False
        if theirs.scheme == "ssh":
            host = theirs.netloc.rpartition("@")[2]
            host = host.rpartition(":")[0] or host
            here = {hostname, hostname.split(".")[0], "localhost", "127.0.0.1", "::1"}
            if host not in here:
                return False
        if os.path.normpath(theirs.path) == os.path.normpath(mine.path):
            return True
        return stat and os.path.samefile(theirs.path, mine.path)
    except Exception:  # pylint: disable=broad-except
        return False


# -- The registry: targets known by label ------------------------------------
