"""Entry points called by delegate.so: plugin_load, plugin_unload and
callback (every jobtap topic the shim passes on).
"""

import gc
import os
import syslog

import flux
import flux.constants
from flux.job import JobID

from ..jobspec import released_running, released_status
from ..policies import job_include_local
from ..names import DEPENDENCY, EXCEPTION_TYPE, RELEASE_ATTRIBUTE  # noqa: F401 (for delegate.so)
from ..targets import SELF_DELEGATION, parse_target
from ..text import shown
from . import current
from .job import DelegatedJob
from .phases import ENDED, RELEASING
from .reactor import harden_bindings, log
from .runtime import Runtime


#: What delegate.so reads from the handler: its entry points, the job
#: topics it wants (JOB_TOPICS), the jobspec attributes that bring a job's
#: job.create to it (JOB_CREATE_ATTRIBUTES), and the type of the job
#: exception a handler error raises (EXCEPTION_TYPE).  A handler file
#: takes them all with "from flux_delegate.jobmanager.entry import *".
__all__ = (
    "EXCEPTION_TYPE",
    "JOB_CREATE_ATTRIBUTES",
    "JOB_TOPICS",
    "callback",
    "plugin_load",
    "plugin_unload",
)


def claim(args, target, doomed=None):
    """Take the job on: hold it with the "delegated" dependency."""
    runtime = current.runtime
    job = runtime.jobs.get(int(args["id"]))
    if job is None:
        job = DelegatedJob(runtime, args, target, doomed)
        # State first: the calls below can run callbacks for this job.
        runtime.jobs[job.id] = job
        runtime.jobtap.job_attach(job.id, job)
        runtime.jobtap.subscribe(job.id)
    runtime.jobtap.dependency_add(job.id, DEPENDENCY)
    # At submit the job is NEW and its other dependencies are not all
    # recorded yet: job.state.depend starts the check.  A job already in
    # DEPEND (plugin load, restart) is checked now.
    if args.get("state") == flux.constants.FLUX_JOB_STATE_DEPEND:
        job.waiting.check_ready()
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
        job_include_local(args["jobspec"], False)  # a bad value is rejected
    except ValueError as exc:
        if args.get("state") == flux.constants.FLUX_JOB_STATE_NEW:
            raise
        claim(args, None, doomed=str(exc))
        return None
    claim(args, target)
    return None


def has_delegate_dependency(args):
    """Does the job also ask for delegation with --dependency=delegate?"""
    dependencies = args["jobspec"].get("attributes", {}).get("system", {}).get("dependencies")
    return isinstance(dependencies, list) and any(
        isinstance(d, dict) and d.get("scheme") == "delegate" for d in dependencies
    )


def release_attribute(args):
    """The job's system.delegate-release (RELEASE_ATTRIBUTE), or None."""
    system = args["jobspec"].get("attributes", {}).get("system", {})
    return system.get(RELEASE_ATTRIBUTE) if isinstance(system, dict) else None


def resume_released(args):
    """Plugin load (reload, restart) with a job this plugin released and
    not ended yet: one a priority plugin held before its alloc is run
    (Resuming.release_again), one whose run a prolog of the site's
    holds (localrun.py) is taken up again from its eventlog.  One released
    while its remote job ran (starting.py) also follows that job again,
    and its annotation, which a restart forgets, is given back (the
    answer to job.create)."""
    runtime = current.runtime
    status = released_status(args["jobspec"])
    with_remote, annotation = released_running(args["jobspec"])
    state = args.get("state")
    if (status is None and not with_remote) or int(args["id"]) in runtime.jobs:
        return None
    name = JobID(args["id"]).f58
    before_alloc = (flux.constants.FLUX_JOB_STATE_PRIORITY, flux.constants.FLUX_JOB_STATE_SCHED)
    running = (flux.constants.FLUX_JOB_STATE_RUN, flux.constants.FLUX_JOB_STATE_CLEANUP)
    if state not in before_alloc + running:
        return None  # ended, or ending on its own
    # A job released while its remote job ran names no target: it follows
    # the remote job its eventlog names, or fails (doomed) if none.
    doomed = "released while its remote job ran, and no remote job is named in its eventlog"
    job = DelegatedJob(runtime, args, None, doomed=doomed if with_remote else None)
    if state == flux.constants.FLUX_JOB_STATE_CLEANUP:
        job.phase = ENDED
    elif not with_remote:
        job.phase = RELEASING
    job.wait_status = status
    job.runs_with_remote = job.released = with_remote
    job.annotation = annotation
    runtime.jobs[job.id] = job
    runtime.jobtap.job_attach(job.id, job)
    runtime.jobtap.subscribe(job.id)
    how = "while its remote job ran" if with_remote else "by a prolog"
    if state in before_alloc:
        log(syslog.LOG_INFO, f"{name}: released, not yet allocated: its run taken up again")
        job.resuming.release_again(scheduled=state == flux.constants.FLUX_JOB_STATE_SCHED)
    else:
        log(syslog.LOG_INFO, f"{name}: released and held {how}: its run taken up again")
        job.resuming.run_again()
    if with_remote and job.phase != ENDED:
        job.waiting.check_ready()  # its eventlog names the remote job to follow
        if annotation is not None:
            job.showing.republish()  # a restart forgot it
    return job.showing.answer()


def on_job_create(args):
    """job.create of a job with -S system.delegate=TARGET (delegate.so passes
    only jobs with one of JOB_CREATE_ATTRIBUTES): the C delegate plugin's
    convention.  At submit a bad value rejects the job, and so does a
    handler error (delegate.so): a job that asked for delegation never runs
    here instead.  A job already known (plugin load, restart) is taken on
    again; if its value has gone bad meanwhile, it fails once it can.  A
    job this plugin released and whose run a prolog holds is taken up
    again (resume_released)."""
    at_submit = args.get("state") == flux.constants.FLUX_JOB_STATE_NEW
    if release_attribute(args) is not None:
        if at_submit:
            raise ValueError(
                f"system.{RELEASE_ATTRIBUTE} is the delegate plugin's own: no job may be"
                " submitted with it"
            )
        return resume_released(args)
    if has_delegate_dependency(args):
        return None  # job.dependency.delegate decides (and refuses both)
    state = args.get("state")
    if not at_submit and state != flux.constants.FLUX_JOB_STATE_DEPEND:
        log(
            syslog.LOG_WARNING,
            f"{JobID(args['id']).f58}: has system.delegate but was submitted before"
            " delegate.so was loaded: not delegated",
        )
        return None
    value = system_delegate(args)
    try:
        if not isinstance(value, str):
            raise ValueError(f"system.delegate must be a string, not {shown(value)}")
        target = parse_job_target(value)
        check_owner(args)
        if target.kind == "uri" and current.runtime.is_this_instance(target.value):
            raise ValueError(f"{SELF_DELEGATION}: {shown(target.value)} is this instance")
        job_include_local(args["jobspec"], False)  # a bad value is rejected
    except ValueError as exc:
        if at_submit:
            raise
        claim(args, None, doomed=str(exc))
        return None
    claim(args, target)
    return None


JOB_CALLBACKS = {
    "job.new": DelegatedJob.on_new,
    "job.state.depend": DelegatedJob.on_depend,
    "job.update": DelegatedJob.on_update,
    "job.event.urgency": DelegatedJob.on_urgency,
    # A submit rejected after the job was taken on (e.g. by a later
    # dependency) is destroyed without becoming inactive.
    "job.destroy": DelegatedJob.on_inactive,
    "job.event.dependency-remove": DelegatedJob.on_dependency_removed,
    "job.state.sched": DelegatedJob.on_sched,
    "job.state.run": DelegatedJob.on_run,
    "job.event.prolog-start": DelegatedJob.on_prolog,
    "job.event.prolog-finish": DelegatedJob.on_prolog,
    "job.state.cleanup": DelegatedJob.on_cleanup,
    "job.state.inactive": DelegatedJob.on_inactive,
}


#: The job topics wanted for jobs this handler took on (delegate.so passes
#: no others: a delegated job sees a score of events).
JOB_TOPICS = tuple(JOB_CALLBACKS)

#: The jobspec attributes (under attributes.) that bring a job's job.create
#: to callback(): every other job's never enters Python.  (A released job's
#: too: a plugin loaded while it runs finishes it.)
JOB_CREATE_ATTRIBUTES = ("system.delegate", f"system.{RELEASE_ATTRIBUTE}")


def callback(topic, args, job):
    """Every jobtap callback delegate.so passes on arrives here."""
    if topic == "job.dependency.delegate":
        return on_dependency(args)
    if topic == "job.create":
        return on_job_create(args)
    if topic == "conf.update":
        current.runtime.configure(args.get("conf") or {})
        return None
    if job is not None:
        method = JOB_CALLBACKS.get(topic)
        return method(job, args) if method else None
    if topic == "plugin.query":
        return current.runtime.query()
    return None


def plugin_load(conf, jobtap, remote_jobspec=None, policies=None):
    """Start this load of the plugin.  conf: the plugin's KEY=VALUE options;
    jobtap: this load's jobtap calls (delegate_jobtap.Jobtap, from
    delegate.so).  A site's handler file may replace remote_jobspec (the
    jobspec sent to a target) and add policies ({name: order}); see
    delegate_handler.py."""
    harden_bindings()
    # What is loaded now (modules, the bindings) stays: the collector need
    # not look at it again on every full pass, which would otherwise take
    # a good part of a second in the middle of a burst.  The runtime is
    # made after, so that it can be collected once unloaded.
    gc.freeze()
    current.runtime = Runtime(conf, jobtap, remote_jobspec, policies)
    current.runtime.start()


def plugin_unload():
    if current.runtime is not None:
        current.runtime.unload()
    # What this handler let go (jobs, futures, watchers refer to each other
    # in cycles) goes now, while the job-manager is not busy, rather than
    # at some later allocation in the middle of a callback.
    gc.unfreeze()
    gc.collect()
