"""The runtime of one load of the plugin: its options, the job-manager's
handle, the registry and policies, connections, and the jobs it follows.
"""

import json
import os
import socket
import syslog
import time

import flux
import flux.uri
from flux.core.inner import ffi

from ..options import plugin_options
from ..policies import (
    BUILTIN_ORDERS,
    DEFAULT_POLICY,
    POLICY_METRICS,
    MoveSettings,
    MOVE_DEFAULTS,
    include_local_of,
    move_settings_of,
    parse_policy_config,
)
from ..registry import (
    Registry,
    default_user_registry_path,
    merge_registry,
    read_user_registry,
)
from ..jobspec import max_named_nodes
from ..jobspec import remote_jobspec as default_remote_jobspec
from ..targets import same_instance
from .admission import Admission
from .connections import Connections, Helpers
from .move import Mover
from .reactor import free_watcher, log_text, then
from .schedule import TargetSchedule, local_sender


def new_counts():
    """What a load counts (flux remote status shows it): how jobs went on
    to choose a target, from job.new ("early"), or when their turn came in
    a burst without a look at their eventlog ("early-queued"), or after
    that look ("at-depend"); candidates' feasibility asked or taken from
    preflight-cache; how many remote jobs' ends came first through a
    journal (and how much a journal sent that was no journal answer or
    event); and outputs read from the guest namespace, from the job's
    directory (the namespace moved there) or through job-info."""
    return {
        "early": 0,
        "early-queued": 0,  # would have gone from job.new but for the window
        "at-depend": 0,
        "feasibility-asked": 0,
        "feasibility-cached": 0,
        "ended-by-journal": 0,
        "journal-malformed": 0,  # answers or entries that were neither
        "output-from-namespace": 0,
        "output-from-job-directory": 0,
        # Local jobs started as their remote job was allocated (starting.py).
        "started-with-remote": 0,
        "output-watched": 0,
        # Live output (liveoutput.py): copied whole as it came; read again
        # whole from the remote job's directory at its end.
        "output-live": 0,
        "output-read-again": 0,
    }


class Runtime:
    """State of one loaded handler: plugin conf, the job-manager's handle,
    connections, the registry and policies, and the jobs it follows."""

    def __init__(self, conf, jobtap, remote_jobspec=None, policies=None):
        self.conf = plugin_options(conf)
        # This load's jobtap calls (delegate_jobtap.Jobtap): they stop
        # working when the load ends, so nothing of it acts through the next.
        self.jobtap = jobtap
        # What the site's handler file replaces (see delegate_handler.py).
        self.remote_jobspec = remote_jobspec or default_remote_jobspec
        self.site_policies = dict(policies or {})
        self.unloaded = False
        self.handle = flux.Flux(handle=ffi.cast("flux_t *", jobtap.handle()))
        # The job-manager owns its handle: the wrapper must never close it.
        self.handle.incref()
        self.hostname = socket.gethostname()
        # This instance's own socket (to refuse delegating to itself).
        self.local_uri = None
        self.this_instance = {}  # uri -> is_this_instance(uri)
        self.submit_timeout = self.conf["submit-timeout"]
        self.preflight_timeout = self.conf["preflight-timeout"]
        # How long a target's "feasible" stays true for a shape of job
        # (Preflight; 0: every job asks).
        self.preflight_cache = self.conf["preflight-cache"]
        # How long a target's plan stays in use (schedule.TargetSchedule),
        # and this instance's own, for a job that may stay (include-local).
        self.estimate_cache = self.conf["estimate-cache"]
        self.local_schedule = TargetSchedule("this instance", local_sender(self), self.estimate_cache)
        # Whether a job is sent on from job.new (Waiting.on_new).
        self.early_handoff = self.conf["early-handoff"]
        # Whether each connection reads its target's journal (journal.py).
        self.journal = self.conf["journal"]
        # Whether a pending job's annotation follows its remote job (annotate()).
        self.annotate = self.conf["annotate"]
        # Whether a local job runs while its remote job does (starting.py).
        self.mirror_run = self.conf["mirror-run"]
        # Whether a running job's output is copied as it comes (liveoutput.py),
        # and how much of its end is kept past output-limit.
        self.live_output = self.conf["live-output"]
        self.output_tail = self.conf["output-tail"]
        # The remote shell's output.batch-timeout set for live output (0: not set).
        self.output_batch_timeout = self.conf["output-batch-timeout"]
        self.counts = new_counts()
        connect_timeout = self.conf["connect-timeout"]
        self.reconnect_interval = self.conf["reconnect-interval"]
        self.reconnect_timeout = self.conf["reconnect-timeout"]
        # Bytes of a remote job's output copied into the local job's.
        self.output_limit = self.conf["output-limit"]
        self.max_named_nodes = None  # until the broker config says (configure)
        self.jobs = {}
        self.admission = Admission()
        self.helpers = Helpers(self)
        self.connections = Connections(self, connect_timeout)
        self.init_registry()

    def init_registry(self):
        """The registry, the policies and moving, until configure() sets them."""
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
        self.policies = dict(BUILTIN_ORDERS, **self.site_policies)
        self.custom_policies = {}
        self.default_policy = DEFAULT_POLICY
        # Whether this instance is a candidate too ([delegate-policy]
        # include-local; a job's -S delegate-local overrides it).
        self.include_local = False
        # Moving pending jobs ([delegate-policy] move-*; move.py).
        self.mover = Mover(
            self,
            MoveSettings(
                MOVE_DEFAULTS["move-margin"], MOVE_DEFAULTS["move-max"], MOVE_DEFAULTS["move-interval"]
            ),
        )

    # -- configuration -------------------------------------------------------

    def configure(self, conf):
        """conf.update: the broker config (at load, and on 'flux config
        reload').  A bad registry or policy table is reported and the
        previous configuration kept.  The error is raised (so that 'flux
        config reload' fails with the message) only for a config not seen
        before: when the plugin is loaded from broker config, jobtap passes
        the same config twice, and failing then would stop the instance
        from starting."""
        # A per-rank job prolog or epilog here: a released job's R names
        # no more than one remote node (jobspec.R_naming).
        self.max_named_nodes = max_named_nodes(conf)
        try:
            clusters, custom, default = parse_policy_config(conf)
            include_local = include_local_of(conf)
            move_settings = move_settings_of(conf)
        except Exception as exc:  # pylint: disable=broad-except
            message = (
                str(exc)
                if isinstance(exc, ValueError)
                else (f"delegate config: {type(exc).__name__}: {exc}")
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
        self.include_local = include_local
        self.mover.configure(move_settings)
        self.config_clusters = clusters
        self.custom_policies = custom
        self.policies = dict(BUILTIN_ORDERS, **self.site_policies, **custom)
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
        now = time.monotonic()
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
        """Whether uri names this instance: its own socket's path, directly
        or through ssh to this host.  No stat here (it may block): another
        path to the socket is found by the connecting thread
        (connections.open_connection).  Remembered per URI for this load:
        every job asks for each candidate."""
        if not self.local_uri:
            return False
        known = self.this_instance.get(uri)
        if known is None:
            if len(self.this_instance) >= 4096:  # URIs come from users: bounded
                self.this_instance.clear()
            known = self.this_instance[uri] = same_instance(
                uri, self.local_uri, self.hostname, stat=False
            )
        return known

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
            "output-limit": self.output_limit,
            "early-handoff": self.early_handoff,
            "journal": self.journal,
            "annotate": self.annotate,
            "mirror-run": self.mirror_run,
            "live-output": self.live_output,
            **{"output-tail": self.output_tail, "output-batch-timeout": self.output_batch_timeout},
            "journals": {
                uri: remote.journal.state() if remote.journal else "off"
                for uri, remote in self.connections.open.items()
            },
            "preflight-cache": self.preflight_cache,
            "estimate-cache": self.estimate_cache,
            "schedules": dict(
                {uri: remote.schedule.query() for uri, remote in self.connections.open.items()},
                local=self.local_schedule.query(),
            ),
            "counts": dict(self.counts),
            "registry": [
                dict(c.extra, uri=c.uri, label=c.label, origin=c.origin)
                for c in self.registry.clusters
            ],
            "registry-error": self.registry_error,
            "user-registry": self.user_registry_path,
            "user-registry-error": self.user_registry_error,
            "policies": sorted(self.policies),
            "default-policy": self.default_policy,
            "include-local": self.include_local,
            "move": dict(
                self.mover.counts,
                margin=self.mover.settings.margin,
                most=self.mover.settings.most,
                interval=self.mover.settings.interval,
            ),
        }

    def unload(self):
        """Leave nothing behind: no connection open (but those that await
        an answer acted on after the unload, see RemoteInstance.shutdown()),
        no helper's pipe, no watcher on the job-manager's reactor.  The
        jobs are left as they are, for the next load to follow."""
        self.unloaded = True
        self.mover.stop()
        for job in list(self.jobs.values()):
            job.following.stop()  # its watch's cancel, while it can be sent
            if job.live is not None:
                job.live.stop()  # its output's too
        self.connections.close()
        self.helpers.close()
        # Timers still pending (timeouts, retries) would only fire to find
        # the plugin unloaded (guard()); until then they would keep this
        # load, and the garbage it refers to, alive.  Every watcher this
        # handle wrapper made is this load's.
        keep = set()
        for remote in self.connections.draining():
            keep |= remote.watchers()
        for watcher in list(self.handle._active_watchers):
            if watcher not in keep:
                free_watcher(watcher)
