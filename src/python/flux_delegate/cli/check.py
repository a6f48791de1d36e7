"""The plugin's pre-flight and choice for a job, without submitting it: the
same candidates (every registry entry for a policy, the one entry of a
label, the instance a URI or job id names), the same questions
(feasibility.check with feasibility_jobspec(), job-list.job-stats,
Fluxion's match statistics where the policy needs them), the same verdicts
(flux_delegate.preflight), and the policy's order.
"""

import os

import flux.uri

from ..jobspec import remote_jobspec
from ..policies import (
    BUILTIN_ORDERS,
    POLICY_METRICS,
    Candidate,
    JobView,
    PolicyError,
    apply_policy,
    load_policy,
    no_target_message,
)
from ..preflight import (
    QUESTIONS,
    expired_verdict,
    feasibility_jobspec,
    record_answer,
    this_instance_verdict,
    unsent_verdict,
)
from ..registry import Cluster
from ..targets import check_local_or_ssh, parse_target
from ..text import shown
from . import probe as probes


class CheckError(Exception):
    """The job would be rejected at submit, or fail before any pre-flight
    (exit 1, with this message)."""


def delegate_value(jobspec):
    """What the jobspec itself names, as the plugin reads it: the value of
    a delegate dependency (--dependency=delegate:X), else -S
    system.delegate; (found, value)."""
    system = (jobspec.get("attributes") or {}).get("system") or {}
    for dep in system.get("dependencies") or ():
        if isinstance(dep, dict) and dep.get("scheme") == "delegate":
            return True, dep.get("value") or ""
    if "delegate" in system:
        return True, system["delegate"]
    return False, None


def resolve_uri(value, hostname):
    """A job id, jobid:, pid: or other flux URI resolved the way the plugin
    does (flux's resolvers; a URI on this host as local://).  Raises
    CheckError with the plugin's words."""
    try:
        uri = flux.uri.JobURI(str(flux.uri.FluxURIResolver().resolve(value)))
    except Exception as exc:  # pylint: disable=broad-except
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CheckError(f"cannot use {shown(value)}: {why}")
    host = uri.netloc.rpartition("@")[2]
    resolved = uri.local if host in ("", hostname, hostname.split(".")[0]) else uri.remote
    try:
        return check_local_or_ssh(resolved)
    except ValueError as exc:
        raise CheckError(f"cannot use {shown(value)}: {exc}")


class Check:
    """One job's pre-flight against a site (cli.site.Site)."""

    def __init__(self, site, jobspec, value=None, timeout=5.0):
        self.site = site
        self.jobspec = jobspec
        self.value = value
        self.timeout = timeout
        self.target = None
        self.candidates = []
        self.order = []
        self.usable = []
        self.policy_error = None
        self.undecided = None  # why the choice cannot be shown here
        self.spec = feasibility_jobspec(remote_jobspec(jobspec))

    # -- candidates ------------------------------------------------------------

    def choose_candidates(self):
        """The candidates, as the plugin takes them (raises CheckError for a
        value it would reject)."""
        site = self.site
        try:
            self.target = parse_target(
                self.value, site.registry, site.policy_names(), site.default_policy
            )
        except ValueError as exc:
            raise CheckError(str(exc))
        target = self.target
        if target.kind == "policy":
            clusters = list(site.registry.clusters)
        elif target.kind == "label":
            clusters = [target.cluster]
        elif target.kind == "uri":
            if site.is_this_instance(target.value):
                raise CheckError(
                    f"{this_instance_verdict()[1]}: {shown(target.value)} is this instance"
                )
            clusters = [site.registry.by_uri(target.value) or Cluster(target.value, origin="explicit")]
        elif target.kind == "jobid" or (target.kind == "scheme" and target.scheme == "pid"):
            uri = resolve_uri(target.value, site.hostname)
            if site.is_this_instance(uri):
                raise CheckError(f"{this_instance_verdict()[1]}: {shown(uri)} is this instance")
            clusters = [site.registry.by_uri(uri) or Cluster(uri, origin="explicit")]
        else:
            raise CheckError(
                f"unknown URI scheme {shown(target.scheme)} in {shown(target.value)}"
                " (delegate takes local://, ssh://, pid: and job ids; resolve other"
                " schemes with 'flux uri' first)"
            )
        self.candidates = [Candidate(c) for c in clusters]
        return self.candidates

    def metrics(self):
        """What the plugin asks besides feasibility, for this policy."""
        policy = self.target.policy if self.target else None
        if policy is None:
            return ()
        return POLICY_METRICS.get(policy, ("pending", "match_time"))

    # -- the pre-flight --------------------------------------------------------

    def questions(self):
        spec = self.spec
        questions = {"feasibility": lambda h: h.rpc(QUESTIONS["feasibility"], {"jobspec": spec})}
        for name in self.metrics():
            questions[name] = lambda h, topic=QUESTIONS[name]: h.rpc(topic, {})
        # Shown whatever the policy: asked, but not counted in the verdict.
        questions.setdefault("pending", lambda h: h.rpc(QUESTIONS["pending"], {}))
        return questions

    def preflight(self):
        """Ask every candidate at once; verdicts as the plugin's."""
        for c in self.candidates:
            if self.site.is_this_instance(c.uri):
                c.verdict, c.reason = this_instance_verdict()
        asked = [c for c in self.candidates if c.verdict is None]
        plugin_questions = ("feasibility",) + tuple(self.metrics())
        results = probes.ask([(c.uri, self.questions()) for c in asked], self.timeout)
        wait = f"{self.timeout:g}s"
        for c, probe in zip(asked, results):
            if not probe.connected:
                c.verdict, c.reason = "unreachable", probe.error
                continue
            c.remote = probe
            if "feasibility" in probe.unsent:
                c.verdict, c.reason = unsent_verdict(probe.unsent["feasibility"])
                continue
            for name in plugin_questions:
                answer = probe.answer(name)
                if answer is not None:
                    record_answer(c, name, *answer)
            answer = probe.answer("pending")
            if "pending" not in plugin_questions and answer and answer[1] is None:
                record_answer(c, "pending", answer[0])  # shown, not needed
            outstanding = set(plugin_questions) & probe.outstanding
            if outstanding:
                c.verdict, c.reason = expired_verdict(c, outstanding, len(plugin_questions), wait)
            if c.verdict is None:  # the connection failed in a way not foreseen
                c.verdict, c.reason = "unreachable", probe.error or "no answer"
        return self.candidates

    # -- the choice --------------------------------------------------------------

    def policy_order(self):
        """The policy's order, as the plugin computes it; for a policy that
        cannot be run here, every candidate (and undecided says why)."""
        policy = self.target.policy
        if policy is None:
            return list(self.candidates)
        if policy == "random":
            self.undecided = "random chooses at submit, among the usable targets"
            return list(self.candidates)
        order = BUILTIN_ORDERS.get(policy)
        if order is None and policy in self.site.custom_policies:
            try:
                order = load_policy(policy, self.site.custom_policies[policy])
            except ValueError as exc:
                self.undecided = f"site policy {policy} cannot be run here: {exc}"
        elif order is None:
            self.undecided = f"policy {policy} is the site handler's own: it chooses at submit"
        if order is None:
            return list(self.candidates)
        job = JobView(None, os.getuid(), self.jobspec)
        return apply_policy(order, policy, self.target.policy_arg, job, self.candidates)

    def choose(self):
        """Order the candidates; returns the usable ones in order (the first
        is the choice).  A policy error leaves none usable."""
        try:
            self.order = self.policy_order()
        except PolicyError as exc:
            self.policy_error = str(exc)
            self.order = []
        self.usable = [c for c in self.order if c.usable]
        return self.usable

    def run(self):
        self.choose_candidates()
        self.preflight()
        return self.choose()

    @property
    def choice(self):
        if self.undecided or not self.usable:
            return None
        return self.usable[0]

    def message(self):
        """Why no candidate can take the job (the plugin's words), or None."""
        if self.policy_error:
            return self.policy_error
        if self.usable:
            return None
        return no_target_message(self.candidates, self.order)

    def policy_text(self):
        if self.target is None or self.target.policy is None:
            return None
        arg = self.target.policy_arg
        return self.target.policy + (f":{arg}" if arg else "")

    def record(self):
        """As the plugin's delegate-choice event says it, plus what the
        command adds (message, undecided)."""
        record = {
            "candidates": [c.record() for c in self.candidates],
            "order": [c.name for c in self.usable],
            "choice": self.choice.name if self.choice else None,
        }
        if self.policy_text():
            record["policy"] = self.policy_text()
        if self.undecided:
            record["undecided"] = self.undecided
        message = self.message()
        if message:
            record["message"] = message
        return record

