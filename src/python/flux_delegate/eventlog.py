"""Reading a job's eventlog: past delegations, an interrupted submit, the
dependencies still outstanding, and how a remote job ended.
"""

try:
    from flux.job import JobID
except ImportError:  # pragma: no cover - unit tests without flux-core
    JobID = None

from .text import brief

# Entries stay the plain dicts job-manager.getattr returns: wrapping each in
# flux.eventlog.EventLogEvent (a dict copy, .name raising KeyError) reads no clearer.


def delegations(eventlog):
    """(uri, remote jobid) of every "delegated" event."""
    found = []
    for entry in eventlog:
        context = entry.get("context") or {}
        if entry.get("name") == "delegated" and "jobid" in context:
            found.append((context.get("uri"), int(context["jobid"])))
    return found


def interrupted_submit(eventlog):
    """The target of the last submission the eventlog records without
    its outcome: {"uri", "label" (or None), "timestamp"}, or None.

    A "delegate-choice" event precedes the first submit, a
    "delegate-failover" each next one; "delegated" records the answer.  A
    submission with neither a "delegated" nor a "delegate-failover" after it
    was interrupted: the target may or may not have created the job."""
    submission = None
    candidates = {}
    for entry in eventlog:
        name = entry.get("name")
        context = entry.get("context") or {}
        if name == "delegate-choice":
            candidates = {
                c.get("label") or c.get("uri"): c
                for c in context.get("candidates") or []
                if isinstance(c, dict)
            }
            submission = (context.get("choice"), entry.get("timestamp"))
        elif name == "delegate-failover":
            submission = (context.get("next"), entry.get("timestamp"))
        elif name == "delegated":
            submission = None
    if submission is None or submission[0] not in candidates:
        return None
    record = candidates[submission[0]]
    return {
        "uri": record.get("uri"),
        "label": record.get("label"),
        "timestamp": float(submission[1] or 0.0),
    }


def outstanding_dependencies(eventlog):
    """Descriptions of the dependencies still held, from a job eventlog."""
    pending = set()
    for entry in eventlog:
        context = entry.get("context") or {}
        if entry.get("name") == "dependency-add":
            pending.add(context.get("description"))
        elif entry.get("name") == "dependency-remove":
            pending.discard(context.get("description"))
    return pending


def find_delegation(eventlog):
    """Context of the job's "delegated" event ({jobid, uri}), or None."""
    found = None
    for entry in eventlog:
        if entry.get("name") == "delegated":
            found = entry.get("context") or {}
        elif entry.get("name") == "delegate-failover":
            found = None  # that remote job failed: choose again
    return found


class RemoteOutcome:
    """What the remote job's eventlog says about its end."""

    def __init__(self):
        self.exception = None  # context of the first fatal exception
        self.wait_status = None  # from "finish"
        self.allocated = False  # "alloc": its shells may be starting
        self.started = False
        self.ended = False  # "clean" seen: nothing more will happen

    def update(self, name, context):
        context = context or {}
        if name == "exception":
            if context.get("severity", 0) == 0 and self.exception is None:
                self.exception = context
        elif name == "alloc":
            self.allocated = True
        elif name == "start":
            self.started = True
        elif name == "finish":
            self.wait_status = context.get("status")
        elif name == "clean":
            self.ended = True


def describe_origin(origin):
    """'job ƒX of HOST' for an origin record (remote data: checked)."""
    try:
        jobid = JobID(int(origin.get("jobid"))).f58
    except (TypeError, ValueError, OverflowError, OSError):
        jobid = "?"
    return f"job {jobid} of {str(origin.get('host'))[:64]}"


def describe_remote_exception(remote_id, uri, exception):
    """Note of the local DelegationFailure for a remote job exception."""
    kind = brief(exception.get("type", "unknown"), 64)
    note = brief(exception.get("note") or "")
    where = f"remote job {remote_id} on {uri}"
    if kind == "cancel":
        return f"{where} was canceled" + (f": {note}" if note else "")
    return f"{where} failed: {kind} exception" + (f": {note}" if note else "")


def local_end_reason(args, name):
    """Why the local job ended, as a reason for canceling the remote one."""
    event = args.get("end_event") or {}
    context = event.get("context") or {}
    if event.get("name") == "exception":
        note = context.get("note") or ""
        return f"{context.get('type', 'exception')} in the source instance" f" (job {name})" + (
            f": {note}" if note else ""
        )
    return f"job {name} ended in the source instance"
