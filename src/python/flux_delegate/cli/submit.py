"""'flux remote check' and 'flux remote submit': the subcommands that take
flux submit's own options (flux-core's parser, CLI plugins and jobspec
builder).  check runs the delegate plugin's pre-flight and choice on the
job and shows each candidate's verdict, submitting nothing; submit runs the
same pre-flight, then submits the job with its delegate dependency (and,
with --watch, follows it as 'flux remote attach' does).  Each takes the
arguments after its subcommand's name (check_remotes, submit_remote).
"""

import argparse
import json
import sys

from flux.cli.base import SubmitBaseCmd, Xcmd
from flux.cli.submit import SubmitCmd

from ..jobspec import remote_jobspec
from ..preflight import feasibility_jobspec
from .check import Check, CheckError, delegate_value
from .command import DEFAULT_TIMEOUT, LOGGER, fail, positive_seconds, say_warnings
from .follow import follow_jobs
from .formats import CheckRow, formatter
from .site import Site


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
