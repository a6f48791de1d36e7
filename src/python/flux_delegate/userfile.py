"""Editing the user's registry file (~/.config/flux/delegate.yaml), as 'flux
remote add' and 'flux remote remove' do: read it as the plugin reads it,
change one entry, check the result as the plugin would, and replace the
file in one step (a temporary file in the same directory, renamed over it),
under a lock so that two edits at once do not lose one.

Pure: the standard library and PyYAML; no broker, no connection.
"""

import contextlib
import fcntl
import json
import os
import stat
import tempfile

from .registry import MAX_REGISTRY_BYTES, parse_registry, read_user_entries

#: Characters a label may not contain (parse_registry's rule); labels are
#: also printable, since a label with control characters could never be
#: named in --dependency=delegate:LABEL.
LABEL_FORBIDDEN = ":/"


class UserFileError(ValueError):
    """The file cannot be read or edited; the message says why."""


def yaml_module():
    try:
        import yaml
    except ImportError:
        raise UserFileError("PyYAML is not installed, so the registry file cannot be edited")
    return yaml


def read_entries(path):
    """The 'delegate' list of the file at path, as written (URI strings or
    mappings with their extra keys); [] for a missing or empty file.
    Raises UserFileError for a file the plugin would refuse (naming the
    entry at fault), so that it is fixed before it is edited."""
    try:
        entries = read_user_entries(path)  # as the plugin reads it
        parse_registry(entries, "user", path)
    except ValueError as exc:
        raise UserFileError(str(exc))
    return entries if entries is not None else []


def entry_label(entry):
    return entry.get("label") if isinstance(entry, dict) else None


def entry_uri(entry):
    return entry.get("uri") if isinstance(entry, dict) else entry


def check_label(label, policies=()):
    """Raise UserFileError unless label is one the plugin accepts and a
    user can name (policies: the policy names no label may take)."""
    if not isinstance(label, str) or not label:
        raise UserFileError("a label must be a non-empty string")
    if any(c.isspace() for c in label):
        raise UserFileError(f"label '{label}' may not contain white space")
    if any(c in LABEL_FORBIDDEN for c in label):
        raise UserFileError(f"label '{label}' may not contain ':' or '/'")
    if not label.isprintable():
        raise UserFileError(f"label {label!r} may not contain control characters")
    if label in policies:
        raise UserFileError(
            f"label '{label}' is the name of a policy"
            f" (--dependency=delegate:{label} names the policy)"
        )


def parse_settings(settings):
    """--set KEY=VALUE ... as {key: value}: a value that is JSON (a number,
    true/false, a list, a quoted string) is taken as such, anything else as
    a string.  uri and label are not extra keys."""
    extra = {}
    for setting in settings or ():
        key, sep, value = setting.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserFileError(f"--set {setting}: expected KEY=VALUE")
        if key in ("uri", "label"):
            raise UserFileError(f"--set {key}: the {key} is given as an argument")
        try:
            extra[key] = json.loads(value)
        except ValueError:
            extra[key] = value
    return extra


def uri_key(uri):
    """What makes two URIs the same target: scheme, host, and the socket's
    path with repeated and trailing slashes folded."""
    scheme, _, rest = uri.partition("://")
    host, _, path = rest.partition("/")
    return scheme.lower(), host, os.path.normpath("/" + path)


def add_entry(entries, label, uri, extra=None):
    """entries with {label, uri, extra...} appended.  Raises UserFileError
    if the file already has that label or that URI."""
    for index, entry in enumerate(entries):
        if entry_label(entry) == label:
            raise UserFileError(
                f"remote '{label}' already exists ({entry_uri(entry)}):"
                f" 'flux remote remove {label}' first"
            )
        if isinstance(entry_uri(entry), str) and uri_key(entry_uri(entry)) == uri_key(uri):
            known = entry_label(entry)
            raise UserFileError(
                f"{uri} is already in the registry"
                + (f" as '{known}'" if known else f" (delegate[{index}], without a label)")
            )
    entry = {"label": label, "uri": uri}
    entry.update(extra or {})
    return list(entries) + [entry]


def remove_entry(entries, name):
    """(entries without the one labelled name, or else with that URI; the
    entry removed), or (entries, None) if there is none."""
    for index, entry in enumerate(entries):
        if entry_label(entry) == name:
            return entries[:index] + entries[index + 1 :], entry
    for index, entry in enumerate(entries):
        uri = entry_uri(entry)
        if isinstance(uri, str) and uri_key(uri) == uri_key(name) and "://" in name:
            return entries[:index] + entries[index + 1 :], entry
    return entries, None


def render(entries, path="the registry file"):
    """The file's text for entries, checked as the plugin will read it."""
    yaml = yaml_module()
    text = yaml.safe_dump(
        {"delegate": list(entries)},
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
    )
    try:
        parse_registry(yaml.safe_load(text)["delegate"], "user", path)
    except ValueError as exc:
        raise UserFileError(str(exc))
    if len(text.encode("utf-8")) > MAX_REGISTRY_BYTES:
        raise UserFileError(
            f"{path}: would be larger than the {MAX_REGISTRY_BYTES} bytes the plugin reads"
        )
    return text


def real_path(path):
    """The file a path names, through symbolic links (the link stays)."""
    return os.path.realpath(path)


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock for editing path (on a lock file beside it:
    the file itself is replaced, so it cannot carry the lock)."""
    directory, name = os.path.split(path)
    lockpath = os.path.join(directory, f".{name}.lock")
    fd = os.open(lockpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomically(path, text):
    """Replace the file at path with text in one step: a temporary file in
    the same directory, synced, given the old file's mode (0600 for a new
    one), renamed over it.  A reader sees the old file or the new one,
    never a part."""
    directory, name = os.path.split(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            fp.write(text)
            fp.flush()
            os.fchmod(fp.fileno(), mode)
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def edit(path, change):
    """Apply change(entries) -> (new entries, result) to the file at path
    under the lock, write it if the entries changed, and return result.
    The directory is made if missing (~/.config/flux)."""
    path = real_path(path)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UserFileError(f"{directory}: {exc.strerror}")
    try:
        with locked(path):
            entries = read_entries(path)
            new, result = change(entries)
            if new != entries:
                write_atomically(path, render(new, path))
            return result
    except OSError as exc:
        raise UserFileError(f"{path}: {exc.strerror or exc}")
