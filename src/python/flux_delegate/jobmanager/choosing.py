"""Choosing: where a job goes.

The job's environment is read (from its J), its target resolved (a
label, a URI, a job id, or a policy over the registry, this instance
included where include-local allows it), every candidate asked
(Preflight), the candidates ordered by the policy, and the choice recorded
(delegate-choice).  The first usable candidate is submitted to
(Submitting); this instance, if it comes first, keeps the job (stay_local).
"""

import json
import syslog

from flux.core.inner import ffi, lib

from ..estimate import request_of_jobspec
from ..jobspec import with_output_batch_timeout
from ..names import DEPENDENCY
from ..policies import (
    Candidate,
    JobView,
    PolicyError,
    apply_policy,
    job_include_local,
    no_target_message,
)
from ..registry import Cluster
from ..targets import SELF_DELEGATION
from ..text import shown
from .phases import ENDED, SUBMITTING, WAITING, Phase
from .preflight import Preflight, estimate_candidates, reserve_choice
from .reactor import log
from .resolve import resolve_target
from .waiting import look_up_own


class Choosing(Phase):
    """The choosing phase of one job (job.py holds its state)."""

    __slots__ = ()

    def start(self):
        """Fetch the job's environment (only in J), then choose and submit."""
        self.job.phase = SUBMITTING
        look_up_own(self.job, "J", self.on_J)

    def on_J(self, J):
        job = self.job
        # J is the signed original jobspec; unwrapping it is local work.
        original = lib.flux_unwrap_string(J, False, ffi.NULL, ffi.NULL)
        if original == ffi.NULL:
            raise OSError(ffi.errno, "cannot unwrap the job's J")
        try:
            spec = json.loads(ffi.string(original).decode())
        finally:
            lib.free(original)
        environment = spec.get("attributes", {}).get("system", {}).get("environment")
        job.remote_spec = job.runtime.remote_jobspec(job.jobspec, environment, job.origin)
        runtime = job.runtime  # its output copied as it comes (liveoutput.py)?
        if runtime.mirror_run and runtime.live_output and runtime.output_limit > 0 and (
            runtime.output_batch_timeout
        ):
            job.remote_spec = with_output_batch_timeout(
                job.remote_spec, job.runtime.output_batch_timeout
            )
        target = job.target
        if target.kind == "policy":
            candidates = [Candidate(c) for c in job.runtime.registry.clusters]
            if self.may_stay:
                candidates.insert(0, Candidate(self.this_instance()))
            self.preflight(candidates)
        elif target.kind == "label":
            self.preflight([Candidate(target.cluster)])
        else:
            resolve_target(job, target, self.on_resolved, job.fail)

    @property
    def may_stay(self):
        """Whether the job may yet run here, in the instance it was
        submitted to (include-local, a policy choosing): not once a
        target was chosen."""
        job = self.job
        if job.target is None or job.target.kind != "policy" or job.candidate is not None:
            return False
        if job.moves:
            return False  # sent away before: alloc-bypass is set
        if job.phase not in (WAITING, SUBMITTING):
            return False
        return job_include_local(job.jobspec, job.runtime.include_local)

    def this_instance(self):
        """This instance as a candidate (include-local)."""
        runtime = self.job.runtime
        return Cluster(runtime.local_uri or "local", label="local", origin="local")

    def stay_local(self):
        """This instance would start the job soonest: it runs here as an
        ordinary job, scheduled here (no alloc-bypass), once its
        dependency is removed.  The handler has no more to do with it."""
        job = self.job
        job.phase = ENDED
        job.stayed = True
        log(syslog.LOG_INFO, f"{job.name}: stays here: this instance starts it soonest")
        job.once_accepted(lambda: job.runtime.jobtap.dependency_remove(job.id, DEPENDENCY))

    def request_for_estimate(self):
        """The job's resources and time limit as a plan places them
        (estimate.Request), or None if its jobspec says otherwise."""
        try:
            return request_of_jobspec(self.job.jobspec)
        except (ValueError, TypeError, AttributeError):
            return None

    def on_resolved(self, uri):
        """An explicit URI (or job id): the one candidate, named by its
        registry label if the registry knows it."""
        job = self.job
        if job.runtime.is_this_instance(uri):
            job.fail(f"{SELF_DELEGATION}: {shown(uri)} is this instance")
            return
        cluster = job.runtime.registry.by_uri(uri) or Cluster(uri, origin="explicit")
        self.preflight([Candidate(cluster)])

    def preflight(self, candidates):
        job = self.job
        if job.phase != SUBMITTING:
            return
        metrics = job.runtime.policy_metrics(job.target.policy)
        Preflight(job, candidates, metrics, self.choose).start()

    def choose(self, candidates):
        """Order the candidates (policy), record the choice, and try them."""
        job = self.job
        if job.phase != SUBMITTING:
            return
        policy = job.target.policy
        request = fits = None
        if "estimate" in job.runtime.policy_metrics(policy):
            request = self.request_for_estimate()
            fits = estimate_candidates(request, candidates)
        try:
            order = self.order(policy, candidates)
        except PolicyError as exc:
            self.record_choice(policy, candidates, [])
            job.fail(str(exc))
            return
        usable = [c for c in order if c.usable]
        self.record_choice(policy, candidates, usable)
        if not usable:
            job.fail(no_target_message(candidates, order))
            return
        if fits is not None:
            reserve_choice(request, usable[0], fits)
        if usable[0].local:
            self.stay_local()
            return
        usable = [c for c in usable if not c.local]
        job.candidate = usable[0]
        if job.accepted and not job.bypass_set:
            job.releasing.set_bypass()  # held off while it might have stayed here
        job.untried = usable
        job.failures = []
        job.submitting.try_next()

    def order(self, policy, candidates):
        """The candidates in the order the policy tries them (none: as given)."""
        job = self.job
        if policy is not None and policy not in job.runtime.policies:
            raise PolicyError(f"policy '{policy}' is no longer configured")
        if policy is None:
            return list(candidates)
        return apply_policy(
            job.runtime.policies[policy],
            policy,
            job.target.policy_arg,
            JobView(job.id, job.userid, job.jobspec),
            candidates,
        )

    def record_choice(self, policy, candidates, order):
        """Provenance: every candidate with its verdict or metric, and the
        order in which they will be tried (the first is the choice)."""
        job = self.job
        context = {
            "candidates": [c.record() for c in candidates],
            "order": [c.name for c in order],
            "choice": order[0].name if order else None,
        }
        if policy is not None:
            context["policy"] = policy + (
                f":{job.target.policy_arg}" if job.target.policy_arg else ""
            )
        job.runtime.jobtap.post_event(job.id, "delegate-choice", context)
