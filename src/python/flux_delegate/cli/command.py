"""What every 'flux remote' subcommand shares: its logger ("flux-remote",
which the command's main() sets up), the defaults and type of the
--timeout options, and how a subcommand warns and fails (exit 1).
"""

import argparse
import logging
import sys

LOGGER = logging.getLogger("flux-remote")

#: Seconds a target has to connect, and then to answer (--timeout).
DEFAULT_TIMEOUT = 5.0

#: Seconds attach waits for a connection to a target (its --timeout).
ATTACH_TIMEOUT = 30.0


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
