"""Resolving a target to a URI, asynchronously where it needs a lookup (a
job-id path).
"""

import errno
import importlib

import flux
import flux.job
import flux.uri

from ..targets import check_local_or_ssh, parse_jobid_path
from ..text import shown
from .reactor import Timer, guard, then
from .outgoing import answer_of


def resolve_target(job, target, on_uri, on_error):
    """Call on_uri(uri) with the URI to connect to, or on_error(message).
    Errors in the callbacks are reported against job."""
    value = shown(target.value)
    if target.kind == "uri":
        try:
            on_uri(check_local_or_ssh(target.value))
        except ValueError as exc:
            on_error(f"cannot use {value}: {exc}")
        return
    if target.kind == "scheme" and target.scheme == "pid":
        # flux's own pid resolver: a few reads of /proc on this host.
        try:
            resolver = importlib.import_module("flux.uri.resolvers.pid").URIResolver()
            found = resolver.resolve(flux.uri.URIResolverURI(target.value))
            uri = check_local_or_ssh(str(flux.uri.JobURI(found).local))
        except OSError as exc:
            why = "no such process" if exc.errno == errno.ENOENT else exc.strerror or exc
            on_error(f"cannot use {value}: {why} on {job.runtime.hostname}")
            return
        except Exception as exc:  # pylint: disable=broad-except
            on_error(f"cannot use {value}: {exc or type(exc).__name__}")
            return
        on_uri(uri)
        return
    if target.kind == "jobid":
        try:
            jobids = target.jobids or parse_jobid_path(flux.uri.URIResolverURI(target.value).path)
        except ValueError as exc:
            on_error(f"cannot use {value}: {exc}")
            return
        JobidResolution(job, value, jobids, on_uri, on_error).step(job.runtime.handle)
        return
    on_error(
        f"unknown URI scheme {shown(target.scheme)} in {value}"
        " (delegate takes local://, ssh://, pid: and job ids; resolve other"
        " schemes with 'flux uri' first)"
    )


class JobidResolution:
    """Resolve a job id (or a path of them) to the URI of the Flux instance
    that job runs, the way flux's jobid URI resolver does (job-list's
    "uri" annotation of a running job), but with futures: the resolver
    itself would block the job-manager."""

    def __init__(self, job, value, jobids, on_uri, on_error):
        self.job = job
        self.value = value
        self.jobids = list(jobids)
        self.on_uri = on_uri
        self.on_error = on_error
        self.hostname = None
        self.timer = None

    def step(self, handle):
        jobid = self.jobids[0]
        future = flux.job.job_list_id(handle, jobid, attrs=["state", "annotations"])
        then(future, self.on_job, job=self.job)

    def step_into(self, remote):
        """The next job of the path, inside the instance reached: asked as
        any request to a target is (it may stop reading, or go away), and
        given up after submit-timeout."""
        jobid = self.jobids[0]
        self.timer = Timer(
            self.job.runtime.submit_timeout, guard(lambda: self.unanswered(jobid), self.job)
        )
        remote.request(
            1024,
            lambda h: flux.job.job_list_id(h, jobid, attrs=["state", "annotations"]),
            self.on_job,
            job=self.job,
        )

    def unanswered(self, jobid):
        self.timer = None
        self.jobids = []  # a late answer is ignored
        self.on_error(
            f"cannot use {self.value}: {self.resolved} did not answer about job"
            f" {jobid.f58} within {self.job.runtime.submit_timeout:g}s"
        )

    def on_job(self, future):
        if not self.jobids:
            return  # given up on (unanswered())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        jobid = self.jobids.pop(0)
        try:
            info = answer_of(future.get_jobinfo)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.on_error(f"cannot use {self.value}: job {jobid.f58} not found")
            else:
                self.on_error(
                    f"cannot use {self.value}: looking up job {jobid.f58}:"
                    f" {exc.strerror or exc}"
                )
            return
        if info.state != "RUN":
            self.on_error(
                f"cannot use {self.value}: job {jobid.f58} is not running" f" (state {info.state})"
            )
            return
        uri = getattr(info.user, "uri", None)
        if not uri:
            self.on_error(
                f"cannot use {self.value}: job {jobid.f58} runs no Flux instance" " (it has no URI)"
            )
            return
        job_uri = flux.uri.JobURI(str(uri))
        # On this host, connect directly rather than through ssh.
        if job_uri.netloc in ("", self.job.runtime.hostname, self.hostname):
            resolved = job_uri.local
        else:
            resolved = job_uri.remote
        self.hostname = job_uri.netloc or self.hostname
        if not self.jobids:
            self.on_uri(resolved)
            return
        # A job inside that instance: look it up there.
        self.resolved = resolved
        self.job.runtime.connections.get(resolved, self.step_into, self.connect_failed, job=self.job)

    def connect_failed(self, message):
        self.on_error(f"cannot use {self.value}: cannot connect to {self.resolved}: {message}")
