"""Entry points called by delegate.so: plugin_load, plugin_unload and
callback (every jobtap topic the shim passes on).
"""

import gc
import os
import syslog

import flux
import flux.constants
from flux.job import JobID

from ..names import DEPENDENCY
from ..targets import SELF_DELEGATION, parse_target
from ..text import shown
from . import current
from .job import DelegatedJob
from .reactor import harden_bindings, log
from .runtime import Runtime


def claim(args, target, doomed=None):
    """Take the job on: hold it with the "delegated" dependency."""
    job = current.runtime.jobs.get(int(args["id"]))
    if job is None:
        job = DelegatedJob(args, target, doomed)
        # State first: the calls below can run callbacks for this job.
        current.runtime.jobs[job.id] = job
        current.jobtap.job_attach(job.id, job)
        current.jobtap.subscribe(job.id)
    current.jobtap.dependency_add(job.id, DEPENDENCY)
    # At submit the job is NEW and its other dependencies are not all
    # recorded yet: job.state.depend starts the check.  A job already in
    # DEPEND (plugin load, restart) is checked now.
    if args.get("state") == flux.constants.FLUX_JOB_STATE_DEPEND:
        job.check_ready()
    return job


def check_owner(args):
    userid = args.get("userid")
    if userid is not None and int(userid) != os.getuid():
        raise ValueError(
            "only the instance owner can delegate jobs"
            f" (job owner {userid}, instance owner {os.getuid()})"
        )


def system_delegate(args):
    """The job's -S system.delegate=POLICY, the C delegate plugin's way."""
    return args["jobspec"].get("attributes", {}).get("system", {}).get("delegate")


def parse_job_target(value):
    """parse_target() against the current registry; on a miss, re-read the
    user's registry file once (it may have just been edited) and retry."""
    current.runtime.refresh_user_registry()
    names = current.runtime.policy_names()
    try:
        return parse_target(value, current.runtime.registry, names, current.runtime.default_policy)
    except ValueError:
        current.runtime.refresh_user_registry(force=True)
        return parse_target(value, current.runtime.registry, names, current.runtime.default_policy)


def on_dependency(args):
    """job.dependency.delegate: take the job on, or reject it.  With no
    value, -S system.delegate (or else the default policy) chooses.

    At submit a bad value rejects the job.  A job already waiting (plugin
    load, instance restart) is always taken on: it may have been delegated
    before, under a registry that has changed since.
    """
    at_submit = args.get("state") == flux.constants.FLUX_JOB_STATE_NEW
    existing = current.runtime.jobs.get(int(args["id"]))
    if existing is not None:
        if at_submit:
            # A second delegate dependency: which one would be meant?
            raise ValueError("a job takes one delegate dependency; this one has more")
        # Plugin load: a job already waiting is taken on once.
        claim(args, existing.target, existing.doomed)
        return None
    value = (args.get("dependency") or {}).get("value")
    also = system_delegate(args)
    if at_submit and value and also is not None:
        raise ValueError(
            "use either --dependency=delegate:TARGET or -S system.delegate=TARGET,"
            f" not both (delegate:{shown(value)}, system.delegate={shown(also)})"
        )
    if not value and also is not None:
        value = also
    try:
        target = parse_job_target(value)
        check_owner(args)
        if target.kind == "uri" and current.runtime.is_this_instance(target.value):
            raise ValueError(f"{SELF_DELEGATION}: {shown(target.value)} is this instance")
    except ValueError as exc:
        if args.get("state") == flux.constants.FLUX_JOB_STATE_NEW:
            raise
        claim(args, None, doomed=str(exc))
        return None
    claim(args, target)
    return None


def on_job_new(args):
    """job.new of a job with -S system.delegate=POLICY (delegate.so passes
    only those): the C delegate plugin's convention.  The job is NEW and
    may not take an exception yet, so a bad value fails it once it is in
    DEPEND, with DelegationFailure, as the C plugin does."""
    jobid = int(args["id"])
    if jobid in current.runtime.jobs:
        return None  # also a delegate dependency: already taken on
    state = args.get("state")
    if state not in (flux.constants.FLUX_JOB_STATE_NEW, flux.constants.FLUX_JOB_STATE_DEPEND):
        log(
            syslog.LOG_WARNING,
            f"{JobID(jobid).f58}: has system.delegate but was submitted before"
            " delegate.so was loaded: not delegated",
        )
        return None
    value = system_delegate(args)
    target, doomed = None, None
    try:
        if not isinstance(value, str):
            raise ValueError(f"system.delegate must be a string, not {shown(value)}")
        target = parse_job_target(value)
        check_owner(args)
    except ValueError as exc:
        doomed = str(exc)
    except Exception as exc:  # pylint: disable=broad-except
        # job.new cannot fail a job (flux ignores its result): whatever
        # went wrong, the job is taken on and fails once it can.
        current.runtime.log_exception(f"{JobID(jobid).f58}: job.new")
        doomed = f"handler error: {type(exc).__name__}: {exc}"
    claim(args, target, doomed)
    return None


JOB_CALLBACKS = {
    "job.state.depend": DelegatedJob.on_depend,
    "job.event.urgency": DelegatedJob.on_urgency,
    # A submit rejected after the job was taken on (e.g. by a later
    # dependency) is destroyed without becoming inactive.
    "job.destroy": DelegatedJob.on_inactive,
    "job.event.dependency-remove": DelegatedJob.on_dependency_removed,
    "job.state.sched": DelegatedJob.on_sched,
    "job.state.cleanup": DelegatedJob.on_cleanup,
    "job.state.inactive": DelegatedJob.on_inactive,
}


#: The job topics wanted for jobs this handler took on (delegate.so passes
#: no others: a delegated job sees a score of events).
JOB_TOPICS = tuple(JOB_CALLBACKS)


def callback(topic, args, job):
    """Every jobtap callback delegate.so passes on arrives here."""
    if topic == "job.dependency.delegate":
        return on_dependency(args)
    if topic == "job.new":
        return on_job_new(args)
    if topic == "conf.update":
        current.runtime.configure(args.get("conf") or {})
        return None
    if job is not None:
        method = JOB_CALLBACKS.get(topic)
        return method(job, args) if method else None
    if topic == "plugin.query":
        return current.runtime.query()
    return None


def plugin_load(conf, remote_jobspec=None, policies=None):
    """Start this load of the plugin.  conf: the plugin's KEY=VALUE options.
    A site's handler file may replace remote_jobspec (the jobspec sent to a
    target) and add policies ({name: order}); see delegate_handler.py."""
    import delegate_jobtap  # delegate.so's own module: only in the broker

    current.jobtap = delegate_jobtap
    harden_bindings()
    # What is loaded now (modules, the bindings) stays: the collector need
    # not look at it again on every full pass, which would otherwise take
    # a good part of a second in the middle of a burst.  The runtime is
    # made after, so that it can be collected once unloaded.
    gc.freeze()
    current.runtime = Runtime(conf, remote_jobspec, policies)
    current.runtime.start()


def plugin_unload():
    if current.runtime is not None:
        current.runtime.unload()
    # What this handler let go (jobs, futures, watchers refer to each other
    # in cycles) goes now, while the job-manager is not busy, rather than
    # at some later allocation in the middle of a callback.
    gc.unfreeze()
    gc.collect()
