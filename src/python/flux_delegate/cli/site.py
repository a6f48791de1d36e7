"""The instance a command runs against (FLUX_URI), as the delegate plugin
loaded there sees it: the broker config's [[delegate]] entries and
[delegate-policy] table, the user's registry file, merged the plugin's way.
"""

import os
import socket

import flux

from ..names import BUILTIN_POLICIES, DEFAULT_POLICY
from ..registry import (
    default_user_registry_path,
    merge_registry,
    parse_registry,
    read_user_registry,
)
from ..targets import same_instance

#: The plugin's name for 'flux jobtap query'.
PLUGIN = "delegate.so"


class Site:
    """The registry and policies a command works with.

    handle: a handle on the instance (None if there is none to connect
    to: then only the user's file is read).  warnings: what the command
    should say on stderr (an unreadable config or file, overridden
    entries).
    """

    def __init__(self, handle=None, environ=None):
        self.environ = os.environ if environ is None else environ
        self.handle = handle
        self.hostname = socket.gethostname()
        self.warnings = []
        self.config = {}
        self.config_error = None
        self.local_uri = None
        self.plugin = None  # 'flux jobtap query delegate.so', if loaded
        self.config_clusters = []
        self.custom_policies = {}  # name -> "module:function" (config)
        self.default_policy = DEFAULT_POLICY
        self.user_path = None
        self.user_clusters = []
        self.user_error = None
        self.registry = None
        self.notes = []

    @classmethod
    def connect(cls, environ=None):
        """The site of the instance at FLUX_URI; an instance-less site
        (the user's file alone) if there is none."""
        site = cls(environ=environ)
        try:
            site.handle = flux.Flux()
        except OSError as exc:
            site.warnings.append(
                f"cannot connect to a Flux instance ({exc.strerror or exc}):"
                " showing the user registry file only"
            )
        site.load()
        return site

    # -- reading -------------------------------------------------------------

    def load(self):
        if self.handle is not None:
            self.ask_instance()
        self.read_config_registry()
        self.user_path = self.registry_path()
        try:
            self.user_clusters = read_user_registry(self.user_path)
        except ValueError as exc:
            self.user_error = str(exc)
            self.warnings.append(f"user registry: {exc}")
        self.registry, self.notes = merge_registry(
            self.config_clusters, self.user_clusters, self.policy_names()
        )
        self.warnings.extend(self.notes)

    def ask_instance(self):
        """config.get, the instance's own URI and owner, and the plugin's
        query, asked at once."""
        h = self.handle
        futures = {
            "config": h.rpc("config.get", nodeid=0),
            "local-uri": h.rpc("attr.get", {"name": "local-uri"}, nodeid=0),
            "owner": h.rpc("attr.get", {"name": "security.owner"}, nodeid=0),
            "plugin": h.rpc("job-manager.jobtap-query", {"name": PLUGIN}, nodeid=0),
        }
        try:
            self.config = futures["config"].get() or {}
        except OSError as exc:
            self.config_error = f"cannot read the broker config: {exc.strerror or exc}"
            self.warnings.append(self.config_error)
        try:
            self.local_uri = futures["local-uri"].get()["value"]
        except (OSError, KeyError, TypeError):
            self.local_uri = None
        try:
            owner = int(futures["owner"].get()["value"])
        except (OSError, KeyError, TypeError, ValueError):
            owner = None
        try:
            plugin = futures["plugin"].get()
        except OSError:
            plugin = None
        # The plugin's view of the user's file is the user's only if the
        # instance is theirs (in a system instance it is the owner's).
        if isinstance(plugin, dict) and owner == os.getuid():
            self.plugin = plugin

    def read_config_registry(self):
        conf = self.config or {}
        try:
            self.config_clusters = parse_registry(conf.get("delegate"), "config", "broker config")
        except ValueError as exc:
            self.config_clusters = []
            self.config_error = str(exc)
            self.warnings.append(f"{exc} (the plugin keeps its previous registry)")
        table = conf.get("delegate-policy") or {}
        if isinstance(table, dict):
            custom = table.get("custom") or {}
            if isinstance(custom, dict):
                self.custom_policies = {
                    k: v for k, v in custom.items() if k not in BUILTIN_POLICIES
                }
            default = table.get("default")
            if isinstance(default, str) and default:
                self.default_policy = default

    def registry_path(self):
        """The user's registry file: the one the plugin loaded here reads
        (its registry=PATH, or its default) when the instance is the user's;
        else $FLUX_DELEGATE_REGISTRY or ~/.config/flux/delegate.yaml, the
        plugin's default."""
        if self.plugin and isinstance(self.plugin.get("user-registry"), str):
            path = self.plugin["user-registry"]
            mine = self.environ.get("FLUX_DELEGATE_REGISTRY")
            if mine and os.path.abspath(mine) != os.path.abspath(path):
                self.warnings.append(
                    f"the delegate plugin of this instance reads {path}, not"
                    f" $FLUX_DELEGATE_REGISTRY ({mine}): using {path}"
                )
            return path
        return default_user_registry_path(self.environ)

    # -- questions -------------------------------------------------------------

    def policy_names(self):
        """Every policy name: built-in, the config's, and those the loaded
        plugin knows (a site handler may add its own)."""
        names = list(BUILTIN_POLICIES) + list(self.custom_policies)
        if self.plugin:
            names += [n for n in self.plugin.get("policies") or () if isinstance(n, str)]
        return tuple(dict.fromkeys(names))

    def is_this_instance(self, uri):
        return same_instance(uri, self.local_uri, self.hostname)

    def user_entry(self, label):
        """The user's own entry of that label (even if a config entry of the
        same label overrides it), or None."""
        for cluster in self.user_clusters:
            if cluster.label == label:
                return cluster
        return None

    def lookup(self, name):
        """The merged registry's entry labelled name (or, for an entry
        without a label, with that URI), or None."""
        return self.registry.by_label(name) or self.registry.by_uri(name)
