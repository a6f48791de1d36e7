"""flux-delegate's handler: what delegate.so runs inside the job-manager.

delegate.so (the jobtap shim) embeds Python and calls three functions of
this file: plugin_load(conf, jobtap) when the plugin is loaded, plugin_unload() on
'flux jobtap remove delegate.so', and callback(topic, args, job) for each
jobtap callback it passes on.  They come from the flux_delegate package,
installed beside delegate.so:

    flux_delegate/jobmanager/entry.py    where each jobtap topic is handled
    flux_delegate/jobmanager/job.py      a delegated job's state machine
    flux_delegate/jobmanager/remote.py   every request to a target
    flux_delegate/policies.py            how a target is chosen

This file is the site's to edit.  Replace a piece of the package here,
without copying it, then 'flux jobtap remove delegate.so && flux jobtap
load delegate.so' (no broker restart, no rebuild): the edited file and a
fresh copy of the package run.  entry.plugin_load() takes the
replacements:

    remote_jobspec(jobspec, environment, origin) -> the jobspec submitted
        to the target (default flux_delegate.jobspec.remote_jobspec, whose
        result shares all but its attributes.system tables with jobspec:
        change the others on a copy);
    policies={NAME: order(job, candidates[, arg])} -> policies usable as
        delegate:NAME, beside the built-in ones.

For example, to charge every remote job to the site's bank:

    from flux_delegate import jobspec

    def remote_jobspec(spec, environment=None, origin=None):
        remote = jobspec.remote_jobspec(spec, environment, origin)
        remote["attributes"]["system"]["bank"] = "remote"
        return remote

    def plugin_load(conf, jobtap):
        entry.plugin_load(conf, jobtap, remote_jobspec=remote_jobspec)
"""

from flux_delegate.jobmanager import entry
from flux_delegate.jobmanager.entry import *  # noqa: F401,F403 (what delegate.so calls)


def plugin_load(conf, jobtap):
    """conf: the plugin's options; jobtap: this load's jobtap calls."""
    entry.plugin_load(conf, jobtap)
