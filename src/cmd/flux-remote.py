#!/bin/false
##############################################################
# flux-remote: see and choose the Flux instances that
# 'flux submit --dependency=delegate:TARGET' sends jobs to.
#
# Part of flux-delegate.  Run as 'flux remote ...' (flux finds
# flux-remote.py in its command directory, or in
# FLUX_EXEC_PATH_PREPEND, and runs it with its own Python).
##############################################################

import argparse
import json
import logging
import os
import signal
import sys
import threading

import flux
import flux.util
from flux.cli.argparse import FluxArgumentParser
from flux.cli.base import SubmitBaseCmd, Xcmd
from flux.cli.submit import SubmitCmd
from flux.job import JobID, JobList
from flux.util import OutputFormat, UtilConfig

from flux_delegate.cli import probe as probes
from flux_delegate.cli.check import Check, CheckError, delegate_value, resolve_uri
from flux_delegate.cli.follow import AttachError, Follower, Sink
from flux_delegate.cli.jobs import Row as JobRow
from flux_delegate.cli.jobs import delegated_jobs
from flux_delegate.cli.site import Site
from flux_delegate.cli.status import Status, status_questions
from flux_delegate.preflight import feasibility_jobspec
from flux_delegate.jobspec import remote_jobspec
from flux_delegate.targets import parse_target
from flux_delegate.userfile import (
    UserFileError,
    add_entry,
    check_label,
    edit,
    parse_settings,
    remove_entry,
    uri_key,
)

LOGGER = logging.getLogger("flux-remote")

#: Seconds a target has to connect, and then to answer (--timeout).
DEFAULT_TIMEOUT = 5.0


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


def positive_seconds(value):
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is None or not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: '{value}'")
    return seconds


def fail(message):
    LOGGER.error(message)
    sys.exit(1)


def say_warnings(site, editing=False):
    """What the site found wrong, on stderr.  When editing the user's file,
    its own errors are left to the edit, which fails with them."""
    for warning in site.warnings:
        if editing and site.user_error and warning == f"user registry: {site.user_error}":
            continue
        LOGGER.warning(warning)


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


# -- flux remote check ---------------------------------------------------------


def parse_submit_options(cmd, argv):
    """Parse argv as flux submit's run_command() does, with the options of
    the CLI plugins (cmd: a flux.cli.base.MiniCmd); --help and
    --list-plugins exit 0, usage errors 2."""
    parser = cmd.get_parser()
    group = parser.add_argument_group(
        "Options provided by plugins (--help=OPTION for extended plugin documentation)"
    )
    for option in cmd.plugins.options:
        group.add_argument(option.name, **option.kwargs)
    args = parser.parse_args(argv)
    if args.help == "default":
        parser.print_help()
        sys.exit(0)
    elif args.help is not None:
        cmd.plugins.print_help(args.help)
    if args.list_plugins:
        cmd.plugins.print_plugins()
        sys.exit(0)
    return parser, args


def candidate_options(parser, title, to_what, timeout_help):
    """The options of check and submit that say where a job may go and how
    long each candidate has: --to and --timeout, in a group 'title'."""
    group = parser.add_argument_group(title)
    group.add_argument(
        "--to",
        metavar="LABEL|URI|POLICY",
        help=f"{to_what}: a registry label, a URI or job id, or a policy"
        " (default: the job's own delegate dependency, else the default policy)",
    )
    group.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"{timeout_help} (default {DEFAULT_TIMEOUT:g})",
    )
    return group


class CheckCmd(SubmitBaseCmd):
    """flux remote check takes flux submit's own options (flux-core's
    parser and jobspec builder) and never submits."""

    def __init__(self):
        super().__init__(
            "flux remote check",
            usage="flux remote check [--to=TARGET] [OPTIONS...] COMMAND [ARGS...]",
            description=(
                "Ask each delegation candidate whether it could run the job"
                " that 'flux submit OPTIONS... COMMAND' would make, as the delegate"
                " plugin does before it sends a job, and show what the policy"
                " would choose.  Nothing is submitted.  Exit status: 0 when a"
                " candidate can take the job, 1 when none can."
            ),
        )
        self.parser.add_argument(
            "command", nargs=argparse.REMAINDER, help="Job command and arguments"
        )
        group = candidate_options(
            self.parser,
            "flux remote check options",
            "Candidates",
            "Seconds each candidate has to connect, and then to answer",
        )
        group.add_argument("--json", action="store_true", help="Output the result as JSON")
        group.add_argument(
            "--format",
            default="default",
            metavar="FORMAT",
            help="Output format: a name, or Python's format syntax ('help' lists names)",
        )
        group.add_argument("--no-header", action="store_true", help="Suppress header output")

    def parse(self, argv):
        """As flux submit parses, then the job's jobspec; usage errors exit 2."""
        parser, args = parse_submit_options(self, argv)
        try:
            jobspec = self.jobspec_create(args)
        except (ValueError, TypeError, OSError) as exc:
            parser.error(str(exc))
        return parser, args, jobspec.jobspec

    def main(self, argv):
        parser, args, jobspec = self.parse(argv)
        if args.dry_run:
            print(json.dumps(feasibility_jobspec(remote_jobspec(jobspec))))
            sys.exit(0)
        named, value = delegate_value(jobspec)
        if args.to is not None:
            if named and value != args.to:
                parser.error(
                    f"--to={args.to} and the job's own delegate:{value} name different targets"
                )
            value = args.to
        fmt = None if args.json else formatter("check", args.format, CheckRow.headings)
        site = Site.connect()
        say_warnings(site)
        check = Check(site, jobspec, value, args.timeout)
        try:
            check.run()
        except CheckError as exc:
            fail(str(exc))
        if args.json:
            print(json.dumps(check.record()))
        else:
            rows = [CheckRow(c, check) for c in check.candidates]
            fmt.print_items(rows, no_header=args.no_header)
            if not args.no_header:
                print(summary(check))
        sys.exit(0 if check.usable else 1)


def summary(check):
    """The line under the table: the choice, or why there is none."""
    message = check.message()
    if message:
        return message
    names = ", ".join(c.name for c in check.usable)
    if check.undecided:
        return f"{check.undecided}: {names}"
    choice = check.choice
    policy = check.policy_text()
    if policy:
        text = f"{policy} would choose {choice.name}"
    else:
        text = f"the job would go to {choice.name}"
    if len(check.usable) > 1:
        text += f" (then, if it fails: {', '.join(c.name for c in check.usable[1:])})"
    return text


def check_remotes(argv):
    CheckCmd().main(argv)


# -- flux remote submit --------------------------------------------------------


class SubmitRemoteCmd(SubmitCmd):
    """flux submit (flux-core's parser, jobspec builder and submission), with
    the delegate dependency added and the plugin's pre-flight run first:
    when no target can run the job, nothing is submitted."""

    def __init__(self):
        super().__init__(
            "flux remote submit",
            usage="flux remote submit [--to=TARGET] [OPTIONS...] COMMAND [ARGS...]",
            description=(
                "Submit a job to this instance for delegation"
                " (--dependency=delegate:TARGET) and print its job id, once the"
                " pre-flight 'flux remote check' runs says a target can run it."
                " When none can, nothing is submitted: the reasons of each"
                " target go to stderr, and the exit status is 1."
            ),
        )
        candidate_options(
            self.parser,
            "flux remote submit options",
            "Where to",
            "Seconds each candidate has to connect, and then to answer the"
            " pre-flight; with --watch, to connect to the target",
        )
        helps = {
            "--wait": "Wait for the job(s) to end and exit with the exit code of the"
            " remote job (the local job's status mirrors it)",
            "--watch": "Stream the remote job's output while it runs, as 'flux remote"
            " attach' does, then exit with its exit code (implies --wait)",
        }
        for action in self.parser._actions:  # pylint: disable=protected-access
            for option in action.option_strings:
                if option in helps:
                    action.help = helps[option]
        self.submitted = []

    def submit_cb(self, future, args, label=""):
        """As flux submit's, with errors in flux-remote's words."""
        try:
            jobid = future.get_id()
        except OSError as exc:
            LOGGER.error("%s%s", label, exc.strerror or exc)
            self.exitcode = 1
            self.progress_update(submit_failed=True)
            return
        self.submitted.append(jobid)
        if not args.quiet:
            print(jobid, file=args.stdout, flush=True)
        if self.watcher:
            self.watcher.add_jobid(jobid, args.stdout, args.stderr, args.wait)
        elif self.progress:
            self.progress.update(jps=self.jobs_per_sec())

    def jobspecs(self, parser, args):
        """[(args, jobspec, label)]: one job, or one per --cc/--bcc member,
        built by flux-core (usage errors exit 2)."""
        jobs = []
        try:
            for i in self.cc_list(args):
                xargs = Xcmd(args, cc=i) if isinstance(i, int) else args
                jobspec = self.jobspec_create(xargs)
                label = ""
                if args.cc or args.bcc:
                    label = f"cc={i}: "
                    if not args.bcc:
                        jobspec.environment["FLUX_JOB_CC"] = str(i)
                jobs.append((xargs, jobspec, label))
        except (ValueError, TypeError, OSError) as exc:
            parser.error(str(exc))
        return jobs

    def delegate(self, parser, args, jobs):
        """The value of the job's delegate dependency: its own, or --to, or
        empty (the default policy), added to each jobspec if it has none."""
        named, value = delegate_value(jobs[0][1].jobspec)
        if args.to is not None:
            if named and value != args.to:
                parser.error(
                    f"--to={args.to} and the job's own delegate:{value} name different targets"
                )
            value = args.to
        if not named:
            value = value or ""
            for _, jobspec, _ in jobs:
                system = jobspec.jobspec.setdefault("attributes", {}).setdefault("system", {})
                deps = list(system.get("dependencies") or [])
                deps.append({"scheme": "delegate", "value": value})
                jobspec.setattr("system.dependencies", deps)
        return value

    def preflight(self, args, jobs, value):
        """The plugin's pre-flight of each different job (--cc may make
        several); exits 1, having submitted nothing, when no target can run
        one of them."""
        site = Site.connect()
        say_warnings(site)
        if site.handle is None:
            fail("cannot submit: no Flux instance to submit to")
        seen = set()
        for _, jobspec, _ in jobs:
            check = Check(site, jobspec.jobspec, value, args.timeout)
            key = json.dumps(check.spec, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            try:
                check.run()
            except CheckError as exc:
                fail(f"{exc} (nothing was submitted)")
            if not check.usable:
                refuse(check)
            if args.verbose:
                LOGGER.info("%s", summary(check))
        self.flux_handle = site.handle

    def main(self, argv):  # pylint: disable=arguments-renamed
        parser, args = parse_submit_options(self, argv)
        jobs = self.jobspecs(parser, args)
        value = self.delegate(parser, args, jobs)
        if args.dry_run:
            print(jobs[0][1].dumps())
            sys.exit(0)
        self.preflight(args, jobs, value)
        watch = args.watch
        if watch:
            # Not flux-core's watch: the local job has no output of its own.
            args.watch, args.wait = False, None
        args.stdout, args.stderr = sys.stdout, sys.stderr
        if args.wait:
            # The local job ends as the remote one did: flux-core's watcher
            # of the local job gives the remote exit code.
            self.watcher_start(args)
        elif args.progress:
            self.progress_start(args, len(jobs))
        for xargs, jobspec, label in jobs:
            if xargs.log:
                xargs.stdout = self.openlog(xargs.log)
                xargs.stderr = xargs.stdout
            if xargs.log_stderr:
                xargs.stderr = self.openlog(xargs.log_stderr)
            self.submit_async(xargs, jobspec).then(self.submit_cb, xargs, label)
        self.flux_handle.reactor_run()
        code = self.exitcode
        if self.watcher:
            code = max(code, self.watcher.exitcode)
        if watch and self.submitted:
            quiet = not args.verbose
            code = max(code, follow_jobs(self.submitted, args.timeout, quiet=quiet))
        sys.exit(code)


def refuse(check):
    """No target can run the job: say why each cannot, and exit 1."""
    if check.policy_error or not check.candidates:
        fail(f"{check.message()} (nothing was submitted)")
    LOGGER.error("no target can run this job; nothing was submitted:")
    listed = {id(c) for c in check.order}
    for c in check.candidates:
        if c.usable and id(c) not in listed:
            why_not = "not chosen by the policy"
        else:
            why_not = f"{c.verdict}: {c.reason}" if c.reason else c.verdict
        print(f"  {c.describe()}: {why_not}", file=sys.stderr)
    sys.exit(1)


def submit_remote(argv):
    SubmitRemoteCmd().main(argv)


# -- flux remote attach ----------------------------------------------------------

#: Seconds attach (and submit --watch) waits for a connection to a target.
ATTACH_TIMEOUT = 30.0


def follow_jobs(jobids, timeout, quiet=False):
    """Follow jobs to their end (one thread each if several), their output
    on stdout and stderr; the highest exit code.  quiet: no word on
    waiting for a job to be delegated (it was just submitted)."""
    sink = Sink(sys.stdout, sys.stderr, several=len(jobids) > 1)

    def follow(jobid):
        try:
            return Follower(jobid, sink, timeout=timeout, quiet=quiet).run()
        except (AttachError, OSError) as exc:
            LOGGER.error("%s", follow_error(exc))
            return 1

    codes = [1] * len(jobids)

    def run(i, jobid):
        codes[i] = follow(jobid)

    try:
        if len(jobids) == 1:
            return follow(jobids[0])
        threads = [
            threading.Thread(target=run, args=(i, j), daemon=True) for i, j in enumerate(jobids)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        # Detach: the jobs go on, here and there.
        names = [JobID(j).f58 for j in jobids]
        if len(names) == 1:
            sink.say(f"detached: the job goes on ('flux remote attach {names[0]}' follows it again)")
        else:
            sink.say(f"detached: the jobs go on ({' '.join(names)})")
        return 128 + signal.SIGINT
    return max(codes)


def follow_error(exc):
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def attach_job(args):
    sys.exit(follow_jobs([args.jobid], args.timeout))


# -- flux remote jobs ------------------------------------------------------------


def filter_names(value):
    """--filter: job-list's state and result names, comma separated."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    for name in names:
        if name not in JobList.STATES and name not in JobList.RESULTS:
            raise argparse.ArgumentTypeError(
                f"invalid filter '{name}' (states: {', '.join(JobList.STATES)};"
                f" results: {', '.join(JobList.RESULTS)})"
            )
    return names


def list_jobs(args):
    fmt = formatter("jobs", args.format, JobRow.headings)
    filters = set()
    for names in args.filter or ():
        filters.update(names)
    if args.a:
        if filters:
            LOGGER.warning("Both -a and --filter specified, ignoring -a")
        else:
            filters = {"pending", "running", "inactive"}
    if not filters:
        filters = {"pending", "running"}
    user = args.user
    if args.A:
        user = "all"
    try:
        handle = flux.Flux()
        rows, errors = delegated_jobs(
            handle, filters, user=user, count=args.count, ids=args.jobids, timeout=args.timeout
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    for error in errors:
        LOGGER.error("%s", error)
    if args.json:
        print(json.dumps({"jobs": [r.as_dict() for r in rows]}))
    else:
        fmt.print_items(rows, no_header=args.no_header)
    if args.jobids and not rows:
        sys.exit(1)


# -- the command ---------------------------------------------------------------

#: Subcommands that take flux submit's options: they parse their own
#: arguments (flux-core's submission parser), everything after their name.
SUBMIT_STYLE = {
    "check": check_remotes,
    "submit": submit_remote,
}


def add_timeout(parser):
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"Seconds each target has to connect, and then to answer (default {DEFAULT_TIMEOUT:g})",
    )


def add_listing_options(parser):
    """The options of a listing (list, jobs), as flux jobs has them:
    -o FORMAT, --json, -n/--no-header; and --timeout for the targets."""
    parser.add_argument(
        "-o",
        "--format",
        default="default",
        metavar="FORMAT",
        help="Output format: a name, or Python's format syntax ('help' lists names)",
    )
    parser.add_argument("--json", action="store_true", help="Output JSON instead of a table")
    parser.add_argument("-n", "--no-header", action="store_true", help="Suppress header output")
    add_timeout(parser)


def register_list(subparsers):
    parser = subparsers.add_parser(
        "list",
        help="list the registry's targets and ask each how it is",
        description=(
            "List every delegation target of the registry (the broker config's"
            " [[delegate]] entries and your registry file), asking all of them at"
            " once: reachable or not (and why), scheduler, resources free/all,"
            " jobs pending and running, whether it answers feasibility checks."
        ),
    )
    add_listing_options(parser)
    parser.set_defaults(func=list_remotes)


def register_add(subparsers):
    parser = subparsers.add_parser(
        "add",
        help="add a target to your registry file",
        description=(
            "Add a target to your registry file (as 'git remote add' does): LABEL"
            " names it in --dependency=delegate:LABEL.  URI is a local:// or ssh://"
            " URI, or a job id (or pid:PID) of a Flux instance, recorded as its URI."
            " Running instances use the new entry for new jobs, without a reload."
        ),
    )
    parser.add_argument("label", metavar="LABEL")
    parser.add_argument("uri", metavar="URI")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Set an extra key of the entry, for site policies (VALUE may be JSON)",
    )
    parser.add_argument(
        "--check", action="store_true", help="Connect to the target first; add it only if it answers"
    )
    add_timeout(parser)
    parser.set_defaults(func=add_remote)


def register_remove(subparsers):
    parser = subparsers.add_parser(
        "remove",
        aliases=["rm"],
        help="remove a target from your registry file",
        description=(
            "Remove the entry LABEL from your registry file.  Entries of the"
            " broker config cannot be removed from here."
        ),
    )
    parser.add_argument("label", metavar="LABEL")
    parser.set_defaults(func=remove_remote)


def register_show(subparsers):
    parser = subparsers.add_parser(
        "show",
        help="show one target and how it is",
        description="Show the registry entry LABEL, where it comes from, and how its target is.",
    )
    parser.add_argument("label", metavar="LABEL")
    parser.add_argument("--json", action="store_true", help="Output JSON")
    add_timeout(parser)
    parser.set_defaults(func=show_remote)


def register_check(subparsers):
    """Listed only: 'check' parses its own arguments (SUBMIT_STYLE)."""
    subparsers.add_parser(
        "check",
        add_help=False,
        help="ask the candidates whether they could run a job, without submitting it",
    )


def register_submit(subparsers):
    """Listed only: 'submit' parses its own arguments (SUBMIT_STYLE)."""
    subparsers.add_parser(
        "submit",
        add_help=False,
        help="submit a job for delegation, once a target is found that can run it",
    )


def register_jobs(subparsers):
    parser = subparsers.add_parser(
        "jobs",
        help="list the delegated jobs of this instance and how they are on their targets",
        description=(
            "List the delegated jobs of this instance (jobs the delegate plugin"
            " took on): each with its target, the remote job id, and how the"
            " remote job is there (state, result, exit code, runtime, nodes),"
            " every target asked at once.  A job whose target does not answer"
            " is listed with what is known here.  Filters apply to the job"
            " where it runs: the remote job when known, else the local one."
        ),
    )
    parser.add_argument("-a", action="store_true", help="List jobs in all states")
    parser.add_argument("-A", action="store_true", help="List jobs of all users (as -u all)")
    parser.add_argument(
        "-u",
        "--user",
        default=str(os.getuid()),
        metavar="USER|UID",
        help='Limit output to jobs of USER ("all" for all users)',
    )
    parser.add_argument(
        "-f",
        "--filter",
        action="append",
        type=filter_names,
        metavar="STATE|RESULT",
        help="List jobs in these states or with these results (comma separated:"
        " pending, running, inactive, completed, failed, canceled, timeout...)",
    )
    parser.add_argument(
        "-c",
        "--count",
        type=int,
        default=1000,
        metavar="N",
        help="Look at the N newest jobs of this instance (default 1000)",
    )
    add_listing_options(parser)
    parser.add_argument("jobids", metavar="JOBID", type=JobID, nargs="*", help="These jobs only")
    parser.set_defaults(func=list_jobs, parser=parser)


def register_attach(subparsers):
    parser = subparsers.add_parser(
        "attach",
        help="stream a delegated job's output from its target, then exit with its exit code",
        description=(
            "Show the output of the remote job of the delegated job JOBID, live"
            " while it runs on its target, then exit with its exit code, as"
            " 'flux job attach' would had the job run here.  A job not"
            " delegated yet is waited for; a job that fails over is followed"
            " to its next target.  A job that failed before it was delegated"
            " exits 1 with its DelegationFailure note.  Interrupting the"
            " command leaves the job running."
        ),
    )
    parser.add_argument("jobid", metavar="JOBID", type=JobID, help="The local job id")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=ATTACH_TIMEOUT,
        metavar="SECONDS",
        help=f"Seconds to wait for a connection to the target (default {ATTACH_TIMEOUT:g})",
    )
    parser.set_defaults(func=attach_job)


#: Each subcommand registers its parser here, in the order 'flux remote
#: --help' lists them.
SUBCOMMANDS = [
    register_list,
    register_show,
    register_add,
    register_remove,
    register_check,
    register_submit,
    register_jobs,
    register_attach,
]


def parser_create():
    parser = FluxArgumentParser(
        prog="flux-remote",
        description="See and choose the Flux instances that jobs are delegated to.",
    )
    subparsers = parser.add_subparsers(
        title="subcommands", description="", dest="subcommand", metavar="SUBCOMMAND"
    )
    subparsers.required = True
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


@flux.util.CLIMain(LOGGER)
def main():
    sys.stdout = open(sys.stdout.fileno(), "w", encoding="utf8", errors="surrogateescape")
    sys.stderr.reconfigure(encoding="utf8", errors="surrogateescape")
    argv = sys.argv[1:]
    if argv and argv[0] in SUBMIT_STYLE:
        SUBMIT_STYLE[argv[0]](argv[1:])
        return
    args = parser_create().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

# vi: ts=4 sw=4 expandtab
