"""The registry of targets: [[delegate]] entries of the broker config and the
user's file (~/.config/flux/delegate.yaml), merged.  The user's file is
read without blocking and only if it is a small regular file.
"""

import os
import stat

from .names import BUILTIN_POLICIES
from .targets import uri_scheme


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
            f"{where}: 'delegate' must be a list of URIs or of tables with" " 'uri' and 'label'"
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
                raise ValueError(f"{at}: label '{label}' may not contain white space, ':' or '/'")
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


def read_user_entries(path):
    """The 'delegate' list of a user's YAML registry file, as written (URI
    strings or mappings with their extra keys); [] for a missing or empty
    file, None for one without entries.  Raises ValueError naming the file for one that cannot be read or
    is not of that shape (the entries themselves: parse_registry())."""
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
    return data.get("delegate")


def read_user_registry(path):
    """Clusters from a user's YAML registry file ('delegate:' as in broker
    config).  A missing file is an empty registry; anything else that is
    wrong raises ValueError naming the file."""
    return parse_registry(read_user_entries(path), "user", path)


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
