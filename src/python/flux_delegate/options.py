"""The plugin's own options (flux jobtap load delegate.so KEY=VALUE, or
conf = {...} in [job-manager] plugins), checked, with their defaults.
"""

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
#: in [job-manager] plugins) that are seconds, with their defaults.
SECONDS_OPTIONS = {
    "submit-timeout": DEFAULT_SUBMIT_TIMEOUT,
    "connect-timeout": DEFAULT_CONNECT_TIMEOUT,
    "preflight-timeout": DEFAULT_PREFLIGHT_TIMEOUT,
    "reconnect-timeout": DEFAULT_RECONNECT_TIMEOUT,
    "reconnect-interval": 2.0,
}


#: Plugin options that are paths.
PATH_OPTIONS = ("handler", "pythonpath", "registry")


def plugin_options(conf):
    """The plugin's options, checked, with defaults: {key: value}.  Raises
    ValueError naming the option for an unknown key (a typo would silently
    keep a default) or a value that is not a positive number of seconds."""
    options = dict(SECONDS_OPTIONS)
    for key, value in (conf or {}).items():
        if key in PATH_OPTIONS:
            options[key] = value
            continue
        if key not in SECONDS_OPTIONS:
            known = ", ".join(PATH_OPTIONS + tuple(SECONDS_OPTIONS))
            raise ValueError(f"unknown plugin option '{key}' (known: {known})")
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = None
        if isinstance(value, bool) or seconds is None or not 0 < seconds < float("inf"):
            raise ValueError(f"plugin option {key}={value}: not a positive number of seconds")
        options[key] = seconds
    return options
