"""'flux remote jobs': the delegated jobs of an instance and how each is on
its target.

The local jobs come from job-list (JobList, as flux jobs asks); which of
them are delegated, and where to, from each one's eventlog (the plugin's
"delegated" dependency and events).  Each target is then asked once, all
targets at once (cli.probe), about its remote jobs: job-list.list-id for
their state and result, and their jobspec for the origin they record (a
job of the same id made for someone else, by a different instance at the
same URI, is not shown as ours).  A job whose target does not answer is
listed with what is known here.

The subcommand itself is list_jobs (its parsed arguments: the table or
JSON it prints, exit 1 when none of the JOBIDs asked for is found), and
filter_names the type of its --filter option.
"""

import argparse
import errno
import json
import sys

import flux
import flux.constants
from flux.job import JobID, JobInfo, JobList

from ..jobspec import origin_of, same_origin
from ..text import brief
from . import probe as probes
from .command import LOGGER
from .delegated import GONE, Delegation
from .formats import formatter

#: What is asked of job-list about the remote jobs.
REMOTE_ATTRS = ["all"]

#: At most this many eventlog lookups in flight at once.
WINDOW = 256

#: Job states a row's "where it runs" state may be filtered on: a remote
#: job may run while its local job is pending (DEPEND: mirror-run=false,
#: or for the moment before the local job starts).
ACTIVE_FILTERS = {"depend", "priority", "sched", "run", "cleanup", "pending", "running", "active"}


class NoJobID(str):
    """An unknown job id: empty, whichever form is asked ({remote_id.f58})."""

    def __new__(cls):
        return super().__new__(cls, "")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return ""


def state_masks(filters):
    """(states, results) bitmasks of job-list filter names (JobList's)."""
    states = results = 0
    for name in filters:
        name = name.lower()
        if name in JobList.STATES:
            states |= JobList.STATES[name]
        elif name in JobList.RESULTS:
            results |= JobList.RESULTS[name]
        else:
            raise ValueError(f"Invalid filter specified: {name}")
    return states, results


def matches(info, states, results):
    """Whether a JobInfo passes the filters, as job-list decides."""
    if states & info.state_id:
        return True
    return bool(
        results
        and info.state_id == flux.constants.FLUX_JOB_STATE_INACTIVE
        and results & info.result_id
    )


class Row:
    """A delegated job: the local job, its delegation, and the remote job
    as its target says it is (or why that is not known)."""

    headings = {
        "id": "JOBID",
        "id.f58": "JOBID",
        "id.f58plain": "JOBID",
        "id.dec": "JOBID",
        "id.hex": "JOBID",
        "name": "NAME",
        "username": "USER",
        "userid": "UID",
        "status": "LOCAL",
        "status_abbrev": "LS",
        "t_submit": "T_SUBMIT",
        "label": "LABEL",
        "uri": "URI",
        "target": "TARGET",
        "target_state": "TSTATE",
        "remote_id": "REMOTEID",
        "remote_id.f58": "REMOTEID",
        "remote_id.f58plain": "REMOTEID",
        "remote_id.dec": "REMOTEID",
        "remote_id.hex": "REMOTEID",
        "remote_state": "RSTATE",
        "remote_status": "REMOTE",
        "remote_status_abbrev": "RS",
        "result": "RESULT",
        "exitcode": "RC",
        "runtime": "RUNTIME",
        "nnodes": "NNODES",
        "ncores": "NCORES",
        "nodelist": "NODELIST",
        "failovers": "FAILOVERS",
        "note": "NOTE",
    }

    def __init__(self, local, delegation):
        self.local = local  # JobInfo
        self.delegation = delegation
        self.remote = None  # JobInfo of the remote job, when its target told
        self.target_state = ""  # "up", "unreachable", "" (not asked)
        self.problem = None  # why the remote job is not known

    # -- the local job ----------------------------------------------------------

    id = property(lambda self: self.local.id)
    name = property(lambda self: self.local.name)
    username = property(lambda self: self.local.username)
    userid = property(lambda self: self.local.userid)
    status = property(lambda self: self.local.status)
    status_abbrev = property(lambda self: self.local.status_abbrev)
    t_submit = property(lambda self: self.local.t_submit)

    @property
    def failovers(self):
        return len(self.delegation.failovers) or ""

    # -- where it went ----------------------------------------------------------

    @property
    def delegated(self):
        return self.delegation.target

    @property
    def label(self):
        return (self.delegated or {}).get("label") or ""

    @property
    def uri(self):
        return (self.delegated or {}).get("uri") or ""

    @property
    def target(self):
        return self.label or self.uri

    @property
    def remote_id(self):
        if self.delegated is None:
            return NoJobID()
        try:
            return JobID(int(self.delegated["jobid"]))
        except (TypeError, ValueError, OverflowError):
            return NoJobID()

    # -- the remote job ---------------------------------------------------------

    def remote_attr(self, attr):
        return getattr(self.remote, attr) if self.remote is not None else ""

    remote_state = property(lambda self: self.remote_attr("state"))
    remote_status = property(lambda self: self.remote_attr("status"))
    remote_status_abbrev = property(lambda self: self.remote_attr("status_abbrev"))

    @property
    def runtime(self):
        """Seconds the remote job has run ("" before it starts)."""
        if self.remote is None or not self.remote.t_run:
            return ""
        return self.remote.runtime

    nnodes = property(lambda self: self.remote_attr("nnodes"))
    ncores = property(lambda self: self.remote_attr("ncores"))
    nodelist = property(lambda self: self.remote_attr("nodelist"))

    @property
    def shown(self):
        """The job whose end is shown: the remote one when known and
        inactive, else the local one once inactive (its status mirrors the
        remote's), else None."""
        inactive = flux.constants.FLUX_JOB_STATE_INACTIVE
        if self.remote is not None and self.remote.state_id == inactive:
            return self.remote
        if self.local.state_id == inactive:
            return self.local
        return None

    @property
    def result(self):
        return self.shown.result if self.shown is not None else ""

    @property
    def exitcode(self):
        return self.shown.returncode if self.shown is not None else ""

    @property
    def effective(self):
        """The job whose state counts for --filter: where it runs."""
        if self.remote is not None and self.delegation.current is not None:
            return self.remote
        return self.local

    @property
    def note(self):
        """Why the remote job is not shown, or how the job failed."""
        if self.delegation.failure is not None:
            return brief(self.delegation.failure)
        if self.problem:
            return self.problem
        if self.delegated is None:
            if self.local.state_id == flux.constants.FLUX_JOB_STATE_INACTIVE:
                return "never delegated"
            return "not delegated yet"
        if self.delegation.current is None and not self.delegation.ended:
            return "failing over"
        return ""

    def as_dict(self):
        remote = None
        if self.remote is not None:
            remote = self.remote.to_dict(filtered=True)
            remote.pop("annotations", None)
        return {
            "id": int(self.id),
            "jobid": self.id.f58,
            "name": self.name,
            "userid": self.userid,
            "state": str(self.local.state),
            "status": str(self.status),
            "label": self.label or None,
            "uri": self.uri or None,
            "remote_id": None if self.remote_id == "" else int(self.remote_id),
            "remote_jobid": self.remote_id.f58 or None,
            "target_state": self.target_state or None,
            "remote": remote,
            "result": self.result or None,
            "exitcode": None if self.exitcode == "" else self.exitcode,
            "note": self.note or None,
            "delegations": self.delegation.delegations,
            "failovers": self.delegation.failovers,
        }


def fetch_local(handle, filters, user, count, ids):
    """The local jobs to look at (JobInfo list) and job-list's errors.  A
    remote job runs while its local job is pending: a filter on running
    jobs asks for the pending ones here too."""
    names = set(filters)
    local = set()
    if names & ACTIVE_FILTERS:
        local.add("active")
    if names - ACTIVE_FILTERS:
        local.update({"active", "inactive"})  # a result here, or there
    joblist = JobList(
        handle,
        attrs=["all"],
        filters=sorted(local),
        ids=ids,
        user=user,
        max_entries=count,
    )
    jobs = joblist.jobs()
    return jobs, joblist.errors


def read_delegations(handle, jobs):
    """{jobid: Delegation} of each job's eventlog (read WINDOW at a time);
    a job whose eventlog cannot be read is left out."""
    found = {}
    jobs = list(jobs)
    for start in range(0, len(jobs), WINDOW):
        batch = jobs[start : start + WINDOW]
        futures = [
            handle.rpc("job-info.lookup", {"id": int(j.id), "keys": ["eventlog"], "flags": 0})
            for j in batch
        ]
        for job, future in zip(batch, futures):
            try:
                found[job.id] = Delegation.from_text(future.get().get("eventlog"))
            except OSError:
                continue
    return found


def remote_questions(rows):
    """{name: send(handle)}: job-list and the jobspec of each remote job."""
    questions = {}
    for row in rows:
        rid = int(row.remote_id)
        questions[f"list {rid}"] = lambda h, rid=rid: h.rpc(
            "job-list.list-id", {"id": rid, "attrs": REMOTE_ATTRS}
        )
        questions[f"spec {rid}"] = lambda h, rid=rid: h.rpc(
            "job-info.lookup", {"id": rid, "keys": ["jobspec"], "flags": 0}
        )
    return questions


def record_remote(row, probe, timeout):
    """Fill in a row from what its target answered."""
    rid = int(row.remote_id)
    if not probe.connected:
        row.target_state, row.problem = "unreachable", f"unreachable: {probe.error}"
        return
    listed, spec = probe.answer(f"list {rid}"), probe.answer(f"spec {rid}")
    if listed is None or spec is None:
        broken = probe.unsent.get(f"list {rid}") or probe.unsent.get(f"spec {rid}")
        row.target_state = "unreachable"
        row.problem = (
            f"unreachable: {broken.strerror or broken}"
            if broken
            else f"unreachable: no answer within {timeout:g}s"
        )
        return
    row.target_state = "up"
    for payload, error in (listed, spec):
        if error is not None:
            if error.errno == errno.ENOENT:
                row.problem = f"not on {row.target} any more ({GONE})"
            else:
                row.problem = f"{row.target}: {error.strerror or error}"
            return
    try:
        theirs = origin_of(json.loads(spec[0]["jobspec"]))
    except (ValueError, KeyError, TypeError):
        theirs = None
    if not same_origin(theirs, row.delegation.origin(row.id)):
        row.problem = f"{row.remote_id.f58} on {row.target} is not this job's (a different instance there now?)"
        return
    try:
        row.remote = JobInfo(listed[0]["job"])
    except (KeyError, TypeError, ValueError) as exc:
        row.problem = f"{row.target}: unexpected answer ({exc})"


def ask_targets(rows, timeout):
    """Ask each target, once per URI and all at once, about its jobs."""
    by_uri = {}
    for row in rows:
        if row.delegated is not None and row.uri and row.remote_id != "":
            by_uri.setdefault(row.uri, []).append(row)
    uris = list(by_uri)
    found = probes.ask([(uri, remote_questions(by_uri[uri])) for uri in uris], timeout)
    for uri, probe in zip(uris, found):
        for row in by_uri[uri]:
            record_remote(row, probe, timeout)


def delegated_jobs(handle, filters, user=None, count=1000, ids=None, timeout=5.0):
    """(rows, errors): the delegated jobs among the local jobs job-list
    returns, each with its remote job, newest first, filtered by the state
    of the job where it runs."""
    states, results = state_masks(filters)
    jobs, errors = fetch_local(handle, filters, user, count, ids)
    delegations = read_delegations(handle, jobs)
    rows = [
        Row(j, delegations[j.id]) for j in jobs if j.id in delegations and delegations[j.id].taken
    ]
    ask_targets(rows, timeout)
    if not ids:
        rows = [r for r in rows if matches(r.effective, states, results)]
    return rows, errors


# -- flux remote jobs ----------------------------------------------------------


def filter_names(value):
    """--filter: job-list's state and result names, comma separated."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    for name in names:
        if name not in JobList.STATES and name not in JobList.RESULTS:
            raise argparse.ArgumentTypeError(
                f"invalid filter '{name}' (states: {', '.join(JobList.STATES)};"
                f" results: {', '.join(JobList.RESULTS)})"
            )
    return names


def list_jobs(args):
    fmt = formatter("jobs", args.format, Row.headings)
    filters = set()
    for names in args.filter or ():
        filters.update(names)
    if args.a:
        if filters:
            LOGGER.warning("Both -a and --filter specified, ignoring -a")
        else:
            filters = {"pending", "running", "inactive"}
    if not filters:
        filters = {"pending", "running"}
    user = args.user
    if args.A:
        user = "all"
    try:
        handle = flux.Flux()
        rows, errors = delegated_jobs(
            handle, filters, user=user, count=args.count, ids=args.jobids, timeout=args.timeout
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    for error in errors:
        LOGGER.error("%s", error)
    if args.json:
        print(json.dumps({"jobs": [r.as_dict() for r in rows]}))
    else:
        fmt.print_items(rows, no_header=args.no_header)
    if args.jobids and not rows:
        sys.exit(1)
