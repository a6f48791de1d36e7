#!/bin/false
##############################################################
# flux-remote: see and choose the Flux instances that
# 'flux submit --dependency=delegate:TARGET' sends jobs to.
#
# Part of flux-delegate.  Run as 'flux remote ...' (flux finds
# flux-remote.py in its command directory, or in
# FLUX_EXEC_PATH_PREPEND, and runs it with its own Python).
##############################################################
#
# This file is the command line only: its parser (a register_*
# function per subcommand), the dispatch, and main().  What each
# subcommand does is in the flux_delegate package (flux's Python
# path, where 'make install' puts it), in flux_delegate.cli:
#   registry_cmds  list, show, add, remove
#   submit         check, submit (flux submit's own options)
#   jobs           jobs
#   follow         attach (and submit --watch)
#   formats        the tables' rows and named output formats
#   command        what all share: the logger, --timeout, fail
##############################################################

import os
import sys

import flux
import flux.util
from flux.cli.argparse import FluxArgumentParser
from flux.job import JobID

from flux_delegate.cli.command import ATTACH_TIMEOUT, DEFAULT_TIMEOUT, LOGGER, positive_seconds
from flux_delegate.cli.follow import attach_job
from flux_delegate.cli.jobs import filter_names, list_jobs
from flux_delegate.cli.registry_cmds import add_remote, list_remotes, remove_remote, show_remote
from flux_delegate.cli.submit import check_remotes, submit_remote


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
