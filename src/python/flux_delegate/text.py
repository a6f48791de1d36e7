"""User and remote text as it appears in messages: shown (a user's value, cut
short) and brief (a target's text, capped).  Text is always data, never a
format.
"""

import json


def shown(value, limit=40, limit_bytes=60):
    """A user's (or a target's) value as a message quotes it: non-strings as
    JSON, control characters escaped, and shortened (to limit characters
    and about limit_bytes of UTF-8), so that the reason around it fits in
    flux's 160 bytes of a rejection."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    cut, size = [], 0
    for c in text[:limit]:
        c = c if c.isprintable() else repr(c)[1:-1]
        size += len(c.encode("utf-8", "backslashreplace"))
        if size > limit_bytes:
            break
        cut.append(c)
    whole = len(cut) == len(text)
    cut = "".join(cut)
    if not whole:
        cut += f"...({len(text)} characters)"
    return f"'{cut}'"


def brief(text, limit=300):
    """Text from a target (an error string, an exception note) as it goes
    into an event or a note: as it is, at most limit characters."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} characters)"
