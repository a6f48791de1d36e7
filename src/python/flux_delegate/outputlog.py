"""The remote job's output as the local job's own: the RFC 24 output
eventlog ("guest.output") that 'flux job attach' reads, copied from the
remote job's within a cap, with a notice when something is left out.

Pure: no flux-core needed.  The job-manager side (jobmanager/output.py)
reads the remote eventlog and writes what this makes.
"""

import base64
import binascii
import json
import math
import re
import time

#: RFC 24 output eventlog entries 'flux job attach' prints, and the
#: context keys each must have (with their types) for it to print them
#: without complaint.  Others are not copied.
ENTRY_SHAPES = {
    "header": {},
    "data": {"stream": str, "rank": str},
    "redirect": {"stream": str, "rank": str},
    "log": {"level": int, "message": str},
}

#: The optional keys checked where present (a wrong type would make
#: 'flux job attach' fail on the entry).
OPTIONAL_KEYS = {
    "data": {"data": str, "encoding": str, "eof": bool},
    "redirect": {"path": str},
    "log": {"component": str, "file": str, "rank": int, "line": int},
}

#: The streams attach knows.
STREAMS = ("stdout", "stderr")

#: Syslog's WARNING: how the flux shell says its output was truncated.
LOG_WARNING = 4

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(value):
    """value with every lone surrogate (a JSON escape no UTF-8 can hold,
    which flux's JSON parser refuses) replaced by U+FFFD."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _typed(value, kind):
    """isinstance, with bool not taken for an int (JSON tells them apart)."""
    return isinstance(value, kind) and isinstance(value, bool) == (kind is bool)


def normalized(name, context):
    """The context of an output eventlog entry as 'flux job attach' prints
    it without failing, or None if the entry is not one it reads: a known
    name, the keys it needs with the right types, a stream it knows, a log
    level it can name.  A target's output is copied as it is, and may be
    anything: text no UTF-8 can hold loses what cannot be held (U+FFFD),
    and data with a NUL goes base64-encoded, as the flux shell sends it
    (flux's JSON parser refuses a NUL in a string)."""
    if not isinstance(name, str) or name not in ENTRY_SHAPES or not isinstance(context, dict):
        return None
    for key, kind in ENTRY_SHAPES[name].items():
        if not _typed(context.get(key), kind):
            return None
    for key, kind in OPTIONAL_KEYS.get(name, {}).items():
        if key in context and not _typed(context[key], kind):
            return None
    if name in ("data", "redirect") and context["stream"] not in STREAMS:
        return None
    if name == "log" and not 0 <= context["level"] <= 7:  # attach indexes by it
        return None
    context = clean(context)
    if name == "data":
        if "data" not in context and "eof" not in context:
            return None
        encoding = context.get("encoding")
        data = context.get("data")
        if encoding == "base64":
            try:
                base64.b64decode(data or "", validate=True)
            except (binascii.Error, ValueError):
                return None
        elif data is not None and "\0" in data:
            context = dict(context, encoding="base64")
            context["data"] = base64.b64encode(data.encode("utf-8")).decode("ascii")
    return _without_nul(context)


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\0", "\\0")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def entry_text(name, timestamp, context):
    """One eventlog entry, as flux writes it (compact JSON, one line)."""
    entry = {"timestamp": timestamp, "name": name}
    if context:
        entry["context"] = context
    # No NaN nor Infinity: flux's JSON parser refuses them (ValueError).
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def header_text(timestamp=None):
    """A header like the flux shell's (one task, UTF-8), for an output
    eventlog that has only a notice to tell."""
    return entry_text(
        "header",
        time.time() if timestamp is None else timestamp,
        {
            "version": 1,
            "encoding": {"stdout": "UTF-8", "stderr": "UTF-8"},
            "count": {"stdout": 1, "stderr": 1},
            "options": {},
        },
    )


def notice_text(message, timestamp=None):
    """A warning in the output, as the flux shell writes its own (attach
    prints it on stderr, unless --quiet)."""
    return entry_text(
        "log",
        time.time() if timestamp is None else timestamp,
        {"level": LOG_WARNING, "component": "delegate", "message": message},
    )


def size_text(nbytes):
    """4M, 512K, 100: a byte count as the output-limit option takes it."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)


#: The most data one copied entry holds: consecutive data entries of one
#: stream and rank (lines, as the shell writes them) are joined up to this.
MERGED_DATA = 64 * 1024

#: The largest header taken from a target (the shell's is a few lines).
MAX_HEADER = 64 * 1024


def _json_size(text):
    """Bytes text takes as the inside of a JSON string (as entry_text
    writes it: UTF-8, escapes for what must be escaped)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def checked_entry(name, timestamp, context):
    """(context as attach reads it, the entry's text), or None if it is not
    an output entry attach reads (normalized); a bad timestamp becomes 0."""
    context = normalized(name, context)
    if context is None:
        return None
    if not (_typed(timestamp, float) or _typed(timestamp, int)) or not math.isfinite(timestamp):
        timestamp = 0.0
    try:
        return context, entry_text(name, timestamp, context)
    except ValueError:  # a NaN somewhere in it
        return None


class _Data:
    """Consecutive plain data entries of one stream and rank, joined into
    one (their pieces kept apart until written: joining as they come would
    copy the whole again for each line)."""

    def __init__(self, timestamp, context):
        self.timestamp = timestamp
        self.context = context
        self.pieces = [context["data"]]
        self.nbytes = _json_size(context["data"])

    def takes(self, context, nbytes):
        return (
            set(context) == {"stream", "rank", "data"}
            and context["stream"] == self.context["stream"]
            and context["rank"] == self.context["rank"]
            and self.nbytes + nbytes <= MERGED_DATA
        )

    def text(self):
        return entry_text("data", self.timestamp, dict(self.context, data="".join(self.pieces)))


class OutputCopy:
    """What is kept of a remote job's output eventlog, entry by entry, up
    to limit bytes of the output eventlog written (entries and all): never
    much more than that is held.  The header; then data, redirect and log
    entries in their order, until one does not fit: from there on nothing
    more (the copy is 'capped'), so that what is kept is the output's
    beginning, each stream in order, whole lines as the shell wrote them.

    Consecutive data of one stream and rank (the lines of a job that
    writes one stream for a while) are joined into one entry, so that the
    limit goes to the output rather than to the entries around each line:
    'flux job attach' prints the same.  The order of the streams between
    them is kept."""

    def __init__(self, limit):
        self.limit = limit
        self.header = None
        self.entries = []  # entry texts, and _Data still being joined
        self.size = 0
        self.capped = False
        self.malformed = 0  # entries left out: not something attach reads

    def add(self, name, timestamp, context):
        """Take the next entry; False once nothing more is wanted."""
        if self.capped:
            return False
        checked = checked_entry(name, timestamp, context)
        if checked is None:
            self.malformed += 1
            return True
        context, text = checked
        nbytes = len(text.encode("utf-8")) + 1
        if name == "header":
            if self.header is None and nbytes <= MAX_HEADER:
                self.header = text
            return True
        last = self.entries[-1] if self.entries else None
        plain = set(context) == {"stream", "rank", "data"}
        if plain and isinstance(last, _Data):
            more = _json_size(context["data"])
            if last.takes(context, more):
                if self.size + more > self.limit:
                    self.capped = True
                    return False
                last.pieces.append(context["data"])
                last.nbytes += more
                self.size += more
                return True
        if self.size + nbytes > self.limit:
            self.capped = True
            return False
        self.size += nbytes
        self.entries.append(_Data(timestamp, context) if plain else text)
        return True

    def text(self, notice=None):
        """The output eventlog to write: the header (the remote's, or one
        of ours if a notice is to be told without one), the entries kept,
        and the notice last; None if there is nothing at all to write."""
        if self.header is None and not self.entries and notice is None:
            return None
        lines = [self.header or header_text()]
        lines += [e.text() if isinstance(e, _Data) else e for e in self.entries]
        if notice is not None:
            lines.append(notice_text(notice))
        return "\n".join(lines) + "\n"

    def clear(self):
        """Let go of what was kept (once written out as text())."""
        self.entries = []
        self.header = None


def capped_notice(limit, local_id):
    """What the output says where it was capped."""
    return (
        f"output capped: only its first {size_text(limit)} were copied here"
        f" (plugin option output-limit); 'flux remote attach {local_id}'"
        " shows all of it, from the target"
    )


def missing_notice(reason, local_id):
    """What the output says when it could not be copied (or not all)."""
    return (
        f"the remote job's output {reason}; 'flux remote attach {local_id}'"
        " shows it, from the target"
    )


class LiveCopy:
    """The remote job's output eventlog copied as it is written (live
    output, jobmanager/liveoutput.py): for each entry as it comes, the lines
    to append to the local job's, the first limit bytes of them; past that,
    a notice, and only the last tail bytes of the rest are kept (in memory,
    never more), to be appended at the end (end()).  A header comes first,
    as 'flux job attach' needs: the remote's, or one of ours."""

    def __init__(self, limit, tail, local_id):
        self.limit = limit
        self.tail = tail
        self.local_id = local_id
        self.size = 0  # bytes of lines given to append
        self.header_given = False
        self.capped = False
        self.kept = []  # past the limit: (nbytes, text) of the last entries
        self.kept_size = 0
        self.left_out = 0  # bytes past the limit not kept
        self.malformed = 0

    def take(self, name, timestamp, context):
        """The lines (entry texts) to append now for this entry."""
        checked = checked_entry(name, timestamp, context)
        if checked is None:
            self.malformed += 1
            return []
        context, text = checked
        nbytes = len(text.encode("utf-8")) + 1
        lines = []
        if name == "header":
            if self.header_given:
                return []
            self.header_given = True
            return [text if nbytes <= MAX_HEADER else header_text()]
        if not self.header_given:
            self.header_given = True
            lines.append(header_text())
        if self.capped:
            self.keep(nbytes, text)
            return lines
        if self.size + nbytes > self.limit:
            self.capped = True
            self.keep(nbytes, text)
            return lines + [notice_text(live_capped_notice(self.limit, self.tail, self.local_id))]
        self.size += nbytes
        return lines + [text]

    def keep(self, nbytes, text):
        """Past the limit: kept among the last tail bytes, or left out."""
        if nbytes > self.tail:
            self.left_out += nbytes
            return
        self.kept.append((nbytes, text))
        self.kept_size += nbytes
        while self.kept_size > self.tail:
            dropped, _ = self.kept.pop(0)
            self.kept_size -= dropped
            self.left_out += dropped

    def end(self):
        """The lines to append at the end: past the limit, what was left
        out, said, then the tail kept."""
        if not self.capped:
            return []
        kept, self.kept, self.kept_size = self.kept, [], 0
        message = (
            f"{self.left_out} bytes of output left out here; its last"
            f" {len(kept)} entries follow; 'flux remote attach"
            f" {self.local_id}' shows all of it, from the target"
        )
        return [notice_text(message)] + [text for _, text in kept]


class TailedCopy:
    """OutputCopy's interface over a LiveCopy, for a whole output read
    again (output.RemoteOutput, from jobmanager/liveoutput.py): its first
    limit bytes, then, past them, a notice and only its last tail bytes,
    as the live copy it replaces would have kept.  It never says it is
    full: the whole output is read, never more than limit + tail of it
    held."""

    header = None  # given in the lines (LiveCopy.take)

    def __init__(self, limit, tail, local_id):
        self.live = LiveCopy(limit, tail, local_id)
        self.lines = []

    @property
    def malformed(self):
        return self.live.malformed

    @malformed.setter
    def malformed(self, count):
        self.live.malformed = count

    @property
    def entries(self):
        return self.lines

    def add(self, name, timestamp, context):
        self.lines += self.live.take(name, timestamp, context)
        return True

    def text(self, notice=None):
        lines = self.lines + self.live.end()
        if not lines and notice is None:
            return None
        if not lines:
            lines = [header_text()]
        if notice is not None:
            lines.append(notice_text(notice))
        return "\n".join(lines) + "\n"

    def clear(self):
        self.lines = []


def live_capped_notice(limit, tail, local_id):
    """What live output says where it was capped."""
    return (
        f"output capped: only its first {size_text(limit)} are copied here as"
        f" they come (plugin option output-limit), and its last {size_text(tail)}"
        f" at the end (output-tail); 'flux remote attach {local_id}' shows all"
        " of it, from the target"
    )
