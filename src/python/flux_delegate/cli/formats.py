"""How 'flux remote' shows its tables: the named output formats of list,
jobs and check (FluxRemoteConfig: flux-core's UtilConfig, which the user's
flux-remote.toml may add to), the rows of list (ListRow) and check
(CheckRow), and the OutputFormat of a format name or string (formatter).
The rows of jobs are cli.jobs.Row.
"""

import json

from flux.util import OutputFormat, UtilConfig


class FluxRemoteConfig(UtilConfig):
    """flux-remote's named output formats (flux-remote.toml etc. in the XDG
    config path may add more: [list.formats.NAME] format = "...")."""

    builtin_formats = {
        "list": {
            "default": {
                "description": "Each target: reachable, scheduler, resources free/all, jobs",
                "format": (
                    "{label:<10.10h+} {origin:<6} {state:<11} {sched:<12.12h+} "
                    "{nodes:>7h} {cores:>9h} {gpus:>7h} {pending:>4h} {running:>4h} "
                    "{feasibility:<4h} +:{uri:<10} ?:{reason}"
                ),
            },
            "long": {
                "description": "As default, with the flux-core version and extra keys",
                "format": (
                    "{label:<10.10h+} {origin:<6} {state:<11} {sched:<12.12h+} "
                    "{version:<8.8h+} {nodes:>7h} {cores:>9h} {gpus:>7h} {pending:>4h} "
                    "{running:>4h} {feasibility:<4h} +:{uri:<10} ?+:{extra:<5} ?:{reason}"
                ),
            },
            "uri": {
                "description": "Label, origin and URI only (no target is asked)",
                "format": "{label:<10.10h+} {origin:<6} {uri}",
            },
        },
        "jobs": {
            "default": {
                "description": "Each delegated job: target, remote id, state and result there",
                "format": (
                    "{id.f58:>12} +:{name:<10.10+} +:{target:<6.20h+} {remote_id.f58:>12h} "
                    "{remote_status:>9.9h} {exitcode:>3h} {runtime!F:>8h} {nnodes:>6h} "
                    "+:{nodelist:<8h} ?:{note}"
                ),
            },
            "long": {
                "description": "As default, with the user, the local status, the URI and failovers",
                "format": (
                    "{id.f58:>12} +:{username:<8} +:{name:<10.10+} {status:>9.9} "
                    "+:{target:<6.20h+} {remote_id.f58:>12h} {remote_status:>9.9h} "
                    "{exitcode:>3h} {runtime!F:>8h} {nnodes:>6h} +:{nodelist:<8h} "
                    "+:{uri:<4h} ?:{failovers:>9h} ?:{note}"
                ),
            },
            "ids": {
                "description": "Local id, target, remote id and URI only",
                "format": "{id.f58:>12} +:{target:<6h} {remote_id.f58:>12h} {uri:h}",
            },
        },
        "check": {
            "default": {
                "description": "Each candidate's verdict",
                "format": (
                    "{label:<10.10h+} {verdict:<11} {pending:>4h} ?:{match_time:>8h} "
                    "?:{order:>3h} +:{uri:<10} ?:{reason}"
                ),
            },
        },
    }

    def __init__(self, subcommand):
        initial_dict = {k: {"formats": v} for k, v in self.builtin_formats.items()}
        super().__init__(name="flux-remote", subcommand=subcommand, initial_dict=initial_dict)

    def validate(self, path, conf):
        for key, value in conf.items():
            if key not in self.builtin_formats or not isinstance(value, dict):
                raise ValueError(f"{path}: invalid key {key}")
            for key2, value2 in value.items():
                if key2 != "formats":
                    raise ValueError(f"{path}: invalid key {key}.{key2}")
                self.validate_formats(path, value2)


def dash(value):
    """A value as a table shows it: "" (shown as -) if not known."""
    return "" if value is None else value


class ListRow:
    """A registry entry as 'flux remote list' formats it."""

    headings = {
        "label": "LABEL",
        "origin": "ORIGIN",
        "uri": "URI",
        "file": "FILE",
        "extra": "EXTRA",
        "state": "STATE",
        "reason": "REASON",
        "sched": "SCHED",
        "version": "VERSION",
        "nodes": "NODES",
        "cores": "CORES",
        "gpus": "GPUS",
        "nnodes": "NNODES",
        "ncores": "NCORES",
        "ngpus": "NGPUS",
        "free_nodes": "FREE_NODES",
        "free_cores": "FREE_CORES",
        "free_gpus": "FREE_GPUS",
        "pending": "PEND",
        "running": "RUN",
        "feasibility": "FEAS",
    }

    #: Fields known without asking the target.
    STATIC = {"label", "origin", "uri", "file", "extra"}

    def __init__(self, status):
        self.status = status
        self.label = dash(status.label)
        self.origin = status.origin
        self.uri = status.uri
        self.file = dash(status.file)
        self.extra = ",".join(f"{k}={json.dumps(v)}" for k, v in status.extra.items())
        self.state = dash(status.state)
        self.reason = dash(status.reason)
        self.sched = dash(status.scheduler)
        self.version = dash(status.version)
        for kind in ("nodes", "cores", "gpus"):
            value = getattr(status, kind)
            if value is None:
                free = total = shown = ""
            else:
                free, total = value["free"], value["total"]
                shown = f"{free}/{total}"
            setattr(self, kind, shown)
            setattr(self, f"n{kind}", total)
            setattr(self, f"free_{kind}", free)
        self.pending = dash(status.pending)
        self.running = dash(status.running)
        feasibility = status.feasibility
        if status.state != "up":
            self.feasibility = ""
        else:
            self.feasibility = {True: "yes", False: "no", None: "?"}[feasibility]


class CheckRow:
    """A candidate as 'flux remote check' formats it."""

    headings = {
        "label": "LABEL",
        "name": "NAME",
        "uri": "URI",
        "origin": "ORIGIN",
        "verdict": "VERDICT",
        "reason": "REASON",
        "pending": "PEND",
        "match_time": "MATCH",
        "order": "TRY",
    }

    def __init__(self, candidate, check):
        self.label = dash(candidate.label)
        self.name = candidate.name
        self.uri = candidate.uri
        self.origin = candidate.cluster.origin
        self.verdict = dash(candidate.verdict)
        self.reason = dash(candidate.reason)
        self.pending = dash(candidate.pending)
        self.match_time = "" if candidate.match_time is None else f"{candidate.match_time:.4f}"
        # Where it comes in the order of tries (1: the choice).
        order = [] if check.undecided else [id(c) for c in check.usable]
        self.order = order.index(id(candidate)) + 1 if id(candidate) in order else ""


def formatter(subcommand, name, headings):
    fmt = FluxRemoteConfig(subcommand).load().get_format_string(name)
    try:
        return OutputFormat(fmt, headings=headings)
    except ValueError as exc:
        raise ValueError(f"Error in user format: {exc}")
