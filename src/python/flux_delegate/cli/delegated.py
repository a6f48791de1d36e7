"""What a local job's eventlog says of its delegation, as 'flux remote jobs'
and 'flux remote attach' read it: whether the plugin took the job on, the
remote job it follows now (the last "delegated" event, unless a
"delegate-failover" came after it), the failovers, and how the job ended.

Pure: entries are (name, context, timestamp), from job-info.lookup's text
or from an eventlog watch.
"""

import json

from ..names import DEPENDENCY, EXCEPTION_TYPE

#: Why a remote job may be missing on its target.
GONE = "purged there, or a new instance at that URI"


def parse_eventlog(text):
    """The entries of an eventlog as job-info.lookup returns it (RFC 18:
    one JSON object a line) as dicts; lines that do not parse are skipped."""
    entries = []
    for line in (text or "").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            entries.append(entry)
    return entries


class Delegation:
    """A local job's delegation, from its eventlog.

    taken: the plugin took it on (its "delegated" dependency was added, or
    it chose or sent).  current: the context of the "delegated" event in
    force ({jobid, uri, label?, recovered?}), None before the job is sent
    and after a failover (until the next target has it).  delegations,
    failovers: every "delegated" and "delegate-failover" context, in order.
    exception: the context of the first fatal exception; failure: its
    note when it is a DelegationFailure.  status: the wait status of the
    local "finish" (the remote's, mirrored); ended: "clean" was seen.
    """

    def __init__(self):
        self.taken = False
        self.current = None
        self.delegations = []
        self.failovers = []
        self.choice = None
        self.exception = None
        self.t_submit = None
        self.status = None
        self.ended = False

    @classmethod
    def from_entries(cls, entries):
        record = cls()
        for entry in entries:
            record.update(entry.get("name"), entry.get("context"), entry.get("timestamp"))
        return record

    @classmethod
    def from_text(cls, text):
        return cls.from_entries(parse_eventlog(text))

    def update(self, name, context, timestamp=None):
        """Take one more event into account."""
        context = context if isinstance(context, dict) else {}
        if name == "submit":
            self.t_submit = timestamp
        elif name == "dependency-add" and context.get("description") == DEPENDENCY:
            self.taken = True
        elif name == "delegate-choice":
            self.taken = True
            self.choice = context
        elif name == "delegated" and "jobid" in context and "uri" in context:
            self.taken = True
            self.current = context
            self.delegations.append(context)
        elif name == "delegate-failover":
            self.taken = True
            self.current = None  # that target failed for sure: the next one
            self.failovers.append(context)
        elif name == "exception" and context.get("severity", 0) == 0:
            if self.exception is None:
                self.exception = context
        elif name == "finish":
            self.status = context.get("status")
        elif name == "clean":
            self.ended = True

    @property
    def failure(self):
        """The note of the job's DelegationFailure, or None."""
        if self.exception is not None and self.exception.get("type") == EXCEPTION_TYPE:
            return self.exception.get("note") or EXCEPTION_TYPE
        return None

    @property
    def target(self):
        """The delegation shown for the job: the one in force, else the
        last one (the job failed over, or ended after it)."""
        if self.current is not None:
            return self.current
        return self.delegations[-1] if self.delegations else None

    def origin(self, jobid):
        """What the remote job of this one records of it (its
        delegate-origin): compare with jobspec.same_origin()."""
        return {"jobid": int(jobid), "t_submit": self.t_submit}


def describe_failover(context):
    """A line for a delegate-failover event."""
    where = context.get("label") or context.get("uri") or "?"
    text = f"{where}: {context.get('reason') or 'failed'}"
    if context.get("next"):
        text += f"; trying {context['next']}"
    return text
