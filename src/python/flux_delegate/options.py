"""The plugin's own options (flux jobtap load delegate.so KEY=VALUE, or
conf = {...} in [job-manager] plugins), checked, with their defaults.
"""

import math

try:
    from flux.util import parse_fsd
except ImportError:  # pragma: no cover - unit tests without flux-core
    # Without flux-core's bindings a duration is plain seconds only (30,
    # 2.5): Flux Standard Duration (30s, 5m) needs flux.util.parse_fsd.
    parse_fsd = None

#: Default seconds to wait for a target to answer a submit.
DEFAULT_SUBMIT_TIMEOUT = 30.0


#: Default seconds to wait for a connection to a target (an ssh:// login).
DEFAULT_CONNECT_TIMEOUT = 30.0


#: Default seconds to keep trying to reach a target whose connection broke
#: while it runs a job (it may be restarting) before giving the job up.
DEFAULT_RECONNECT_TIMEOUT = 300.0


#: Default seconds a connected candidate has to answer the pre-flight.
DEFAULT_PREFLIGHT_TIMEOUT = 10.0


#: Plugin options (flux jobtap load delegate.so KEY=VALUE, or conf = {...}
#: in [job-manager] plugins) that are durations, with their defaults in
#: seconds.  A value is a Flux Standard Duration (30s, 5m, 1.5h; a plain
#: number is seconds), as flux's own options take it.
SECONDS_OPTIONS = {
    "submit-timeout": DEFAULT_SUBMIT_TIMEOUT,
    "connect-timeout": DEFAULT_CONNECT_TIMEOUT,
    "preflight-timeout": DEFAULT_PREFLIGHT_TIMEOUT,
    "reconnect-timeout": DEFAULT_RECONNECT_TIMEOUT,
    "reconnect-interval": 2.0,
    "preflight-cache": 60.0,
    # How long a target's plan (earliest_start's estimates) is used before
    # the target is read again; jobs sent meanwhile are counted in at once.
    "estimate-cache": 2.0,
    # With live output: the remote shell's output.batch-timeout (how long
    # it gathers output before it commits it; its own default is 0.5 s),
    # unless the job sets its own.  0: the shell's default.
    "output-batch-timeout": 0.1,
}

#: Duration options that may be 0 (off): preflight-cache, how long a
#: target's "feasible" answer for a shape of job is taken as still true.
ZERO_OK_OPTIONS = ("preflight-cache", "estimate-cache", "move-margin", "output-batch-timeout")


#: Plugin options that are true or false, with their defaults.
#: early-handoff: a job whose only dependency is its delegation is sent to
#: its target as soon as the job-manager accepts it (job.new), not once its
#: eventlog is committed and it enters DEPEND (about 10 ms later).  Off for
#: a site whose own jobtap plugin adds dependencies in job.state.depend
#: (flux-core's add theirs from the jobspec, which is looked at first).
#: journal: follow remote jobs through their target's job-manager journal
#: as well as their eventlogs (jobmanager/journal.py): their end is known
#: as it happens, not once the target has committed it.
#: annotate: keep the local job's annotation user.delegate (target, remote
#: job id and state, nodes) current while it is pending, at the price of a
#: jobspec-update event in its eventlog per remote state change.
#: mirror-run: the local job runs (state R) while its remote job does,
#: from the remote alloc to the remote end (jobmanager/starting.py); off,
#: it stays pending until the remote job has ended.
#: live-output: a running job's output is copied as it is written, for
#: 'flux job attach' to stream it (jobmanager/liveoutput.py); off, or with
#: mirror-run off, it is copied once the remote job has ended.
BOOLEAN_OPTIONS = {
    "early-handoff": True,
    "journal": True,
    "annotate": True,
    "mirror-run": True,
    "live-output": True,
}

BOOLEAN_VALUES = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


#: Plugin options that are paths.
PATH_OPTIONS = ("handler", "pythonpath", "registry")


#: Default bytes of a remote job's output copied into the local job's own
#: (what 'flux job attach LOCALID' shows): output-limit.
DEFAULT_OUTPUT_LIMIT = 4 * 1024 * 1024

#: The most output-limit may be: what is copied is held in the broker's
#: memory until it is written (flux's own warning threshold, 100M).
MAX_OUTPUT_LIMIT = 100 * 1024 * 1024

#: Plugin options that are sizes in bytes (a number, or with a suffix
#: K, M or G, powers of 1024, as flux's output.limit), with defaults.
#: output-tail: of a job whose output passes output-limit as it is copied
#: live (live-output), the last bytes kept and copied at its end.
SIZE_OPTIONS = {
    "output-limit": DEFAULT_OUTPUT_LIMIT,
    "output-tail": 64 * 1024,
}

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def duration(key, value):
    """Seconds of the value given for plugin option key: a number, or a
    string in Flux Standard Duration (flux.util.parse_fsd: 30, 30s, 5m,
    1.5h).  Raises ValueError naming the option and what is wrong; a
    duration must be more than 0 (or 0, for ZERO_OK_OPTIONS) and finite (a
    bool is not a number here)."""
    where = f"plugin option {key}={value}"
    if parse_fsd is not None:
        example = "(e.g. 30, 30s, 5m)"
    else:
        example = "(seconds, e.g. 30: 30s or 5m need flux-core's Python bindings)"
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            seconds = None
        elif not isinstance(value, str):
            seconds = float(value)
        else:
            # parse_fsd refuses a negative duration as it refuses 'abc':
            # the sign is read here, so that '-3' is told what is wrong.
            text = value.strip()
            negative = text.startswith("-")
            try:
                seconds = (parse_fsd or float)(text[1:] if negative else text)
            except ValueError:
                seconds = None
            if seconds is not None and negative:
                seconds = -seconds
    except OverflowError:  # e.g. 1e10d (past datetime.timedelta), 10**400
        raise ValueError(f"{where}: too long a duration") from None
    if seconds is None or math.isnan(seconds):
        raise ValueError(f"{where}: not a duration {example}")
    if math.isinf(seconds):
        raise ValueError(f"{where}: not a finite duration {example}")
    if seconds == 0 and key in ZERO_OK_OPTIONS:
        return 0.0
    if seconds <= 0:
        if key in ZERO_OK_OPTIONS:
            raise ValueError(f"{where}: must be 0 (off) or more")
        raise ValueError(f"{where}: must be more than 0 seconds")
    return seconds


def boolean(key, value):
    """True or False for the value given for plugin option key: a bool, or
    true/false, yes/no, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in BOOLEAN_VALUES:
        return BOOLEAN_VALUES[str(value).strip().lower()]
    raise ValueError(f"plugin option {key}={value}: not true or false")


def size(key, value):
    """Bytes of the value given for plugin option key: a whole number, or
    one with a suffix K, M or G (powers of 1024: 4M, 512k), from 0 to
    MAX_OUTPUT_LIMIT.  Raises ValueError naming the option and what is
    wrong."""
    where = f"plugin option {key}={value}"
    nbytes = None
    if isinstance(value, int) and not isinstance(value, bool):
        nbytes = value
    elif isinstance(value, str):
        text = value.strip()
        suffix = text[-1:].upper() if text[-1:].isalpha() else ""
        digits = text[: len(text) - len(suffix)].strip()
        if suffix in SIZE_SUFFIXES and digits.isdigit() and digits.isascii():
            nbytes = int(digits) * SIZE_SUFFIXES[suffix]
    if nbytes is None:
        raise ValueError(f"{where}: not a size (bytes, or with K, M or G: e.g. 4M)")
    if not 0 <= nbytes <= MAX_OUTPUT_LIMIT:
        raise ValueError(f"{where}: must be from 0 to {MAX_OUTPUT_LIMIT // (1 << 20)}M")
    return nbytes


def plugin_options(conf):
    """The plugin's options, checked, with defaults: {key: value}, a
    duration in seconds, a size in bytes.  Raises ValueError naming the
    option for an unknown key (a typo would silently keep a default) or a
    value that is not a duration of more than 0 (see duration) or a size
    (see size)."""
    options = dict(SECONDS_OPTIONS, **SIZE_OPTIONS, **BOOLEAN_OPTIONS)
    for key, value in (conf or {}).items():
        if key in PATH_OPTIONS:
            options[key] = value
            continue
        if key in SIZE_OPTIONS:
            options[key] = size(key, value)
            continue
        if key in BOOLEAN_OPTIONS:
            options[key] = boolean(key, value)
            continue
        if key not in SECONDS_OPTIONS:
            known = ", ".join(
                PATH_OPTIONS + tuple(SECONDS_OPTIONS) + tuple(SIZE_OPTIONS) + tuple(BOOLEAN_OPTIONS)
            )
            raise ValueError(f"unknown plugin option '{key}' (known: {known})")
        options[key] = duration(key, value)
    return options
