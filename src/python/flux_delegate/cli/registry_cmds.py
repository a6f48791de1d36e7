"""'flux remote list', 'show', 'add' and 'remove': the registry's targets
(the broker config's [[delegate]] entries and the user's registry file),
how each is (every target asked at once), and the edits of the user's
file.  Each function takes the parsed arguments of its subcommand.
"""

import json

from ..targets import parse_target
from ..userfile import (
    UserFileError,
    add_entry,
    check_label,
    edit,
    parse_settings,
    remove_entry,
    uri_key,
)
from . import probe as probes
from .check import CheckError, resolve_uri
from .command import LOGGER, fail, say_warnings
from .formats import ListRow, dash, formatter
from .site import Site
from .status import Status, status_questions


def ask_status(site, clusters, timeout):
    """Status of each cluster, every target asked at once."""
    statuses = [Status(c, site.user_path) for c in clusters]
    found = probes.ask([(c.uri, status_questions()) for c in clusters], timeout)
    for status, probe in zip(statuses, found):
        status.record(probe, timeout, site.is_this_instance(status.uri))
    return statuses


# -- flux remote list ----------------------------------------------------------


def list_remotes(args):
    fmt = formatter("list", args.format, ListRow.headings)
    site = Site.connect()
    say_warnings(site)
    clusters = site.registry.clusters
    fields = {f[2:] if f.startswith("0.") else f for f in fmt.fields}
    if args.json or not fields <= ListRow.STATIC:
        statuses = ask_status(site, clusters, args.timeout)
    else:
        statuses = [Status(c, site.user_path) for c in clusters]
    if args.json:
        print(json.dumps({"remotes": [s.as_dict() for s in statuses]}))
        return
    fmt.print_items([ListRow(s) for s in statuses], no_header=args.no_header)


# -- flux remote show ----------------------------------------------------------


def show_remote(args):
    site = Site.connect()
    say_warnings(site)
    cluster = site.lookup(args.label)
    if cluster is None:
        fail(f"no such remote '{args.label}' (see 'flux remote list')")
    status = ask_status(site, [cluster], args.timeout)[0]
    if args.json:
        print(json.dumps(status.as_dict()))
        return
    lines = [("URI", status.uri)]
    if status.origin == "user":
        lines.append(("Origin", f"user registry file {status.file}"))
    else:
        lines.append(("Origin", "broker config of this instance ([[delegate]])"))
        mine = site.user_entry(cluster.label) if cluster.label else None
        if mine is not None:
            lines.append(("Overrides", f"your file's entry of that label ({mine.uri})"))
    for key, value in status.extra.items():
        lines.append((key, json.dumps(value)))
    lines.append(("State", status.state + (f" ({status.reason})" if status.reason else "")))
    if status.state == "up":
        feasibility = {
            True: "answers feasibility checks",
            False: "no feasibility checks (jobs go there unchecked)",
            None: "feasibility check unanswered",
        }[status.feasibility]
        lines.append(("Scheduler", f"{dash(status.scheduler) or '?'}, {feasibility}"))
        for kind, title in (("nodes", "Nodes"), ("cores", "Cores"), ("gpus", "GPUs")):
            value = getattr(status, kind)
            if value is not None:
                lines.append((title, f"{value['free']} free of {value['total']}"))
        if status.pending is not None:
            lines.append(("Jobs", f"{status.pending} pending, {status.running} running"))
        if status.version:
            lines.append(("flux-core", status.version))
    print(f"* remote {cluster.name}")
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        print(f"  {key + ':':<{width}} {value}")


# -- flux remote add / remove ---------------------------------------------------


def target_uri(site, value):
    """The local:// or ssh:// URI to record for what the user gave: a URI
    as it is, a job id (or pid:, or another scheme flux resolves) as the URI
    of the instance it names."""
    try:
        target = parse_target(value, None, ())
    except ValueError as exc:
        raise UserFileError(str(exc))
    if target.kind == "uri":
        return target.value
    try:
        uri = resolve_uri(value, site.hostname)
    except CheckError as exc:
        raise UserFileError(str(exc))
    LOGGER.info("%s is %s", value, uri)
    return uri


def add_remote(args):
    site = Site.connect()
    say_warnings(site, editing=True)
    label = args.label
    try:
        check_label(label, site.policy_names())
        extra = parse_settings(args.set)
        uri = target_uri(site, args.uri)
    except UserFileError as exc:
        fail(str(exc))
    for cluster in site.config_clusters:
        if cluster.label == label:
            fail(
                f"remote '{label}' already exists in the broker config of this instance"
                f" ({cluster.uri}); choose another label"
            )
        if uri_key(cluster.uri) == uri_key(uri):
            fail(f"{uri} is already in the broker config of this instance as '{cluster.name}'")
    if site.is_this_instance(uri):
        fail(f"{uri} is this instance itself: jobs are never delegated to it")
    if args.check:
        questions = {"version": lambda h: h.rpc("attr.get", {"name": "version"}, nodeid=0)}
        probe = probes.ask([(uri, questions)], args.timeout)[0]
        if not probe.connected:
            fail(f"cannot connect to {uri}: {probe.error} (not added)")
        if probe.answer("version") is None or probe.answer("version")[1] is not None:
            fail(f"{uri} did not answer within {args.timeout:g}s (not added)")
    try:
        edit(site.user_path, lambda entries: (add_entry(entries, label, uri, extra), None))
    except UserFileError as exc:
        fail(str(exc))


def remove_remote(args):
    site = Site.connect()
    say_warnings(site, editing=True)
    name = args.label
    config = [c for c in site.config_clusters if c.label == name or c.uri == name]

    def change(entries):
        entries, removed = remove_entry(entries, name)
        if removed is None:
            if config:
                raise UserFileError(
                    f"remote '{name}' is in the broker config of this instance"
                    f" ({config[0].uri}), not in your registry file {site.user_path}:"
                    " it cannot be removed with flux remote (remove its [[delegate]]"
                    " entry from the broker config and run 'flux config reload')"
                )
            raise UserFileError(f"no such remote '{name}' (see 'flux remote list')")
        return entries, removed

    try:
        edit(site.user_path, change)
    except UserFileError as exc:
        fail(str(exc))
    if config:
        LOGGER.warning(
            "the broker config's entry '%s' (%s) remains: it is not in your file",
            name,
            config[0].uri,
        )
