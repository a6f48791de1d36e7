"""Unit tests of what 'flux remote' is built on, without a broker: editing
the user's registry file, asking targets concurrently, reading a job's
delegation, the rows of flux remote jobs.  (The pre-flight's verdicts:
test_preflight.py.)"""

import errno
import json
import os
import stat
import threading
import time

import pytest
from unit import needs_flux

from flux_delegate import userfile
from flux_delegate.registry import read_user_registry
from flux_delegate.userfile import UserFileError

# -- the user's registry file ----------------------------------------------------


def test_add_and_remove_keep_other_entries_and_their_keys(tmp_path):
    path = str(tmp_path / "flux" / "delegate.yaml")  # the directory is made
    userfile.edit(path, lambda e: (userfile.add_entry(e, "a", "local:///a"), None))
    userfile.edit(
        path,
        lambda e: (userfile.add_entry(e, "b", "ssh://h/b", {"allowed-projects": ["chem"]}), None),
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    clusters = read_user_registry(path)  # as the plugin reads it
    assert [(c.label, c.uri, c.extra) for c in clusters] == [
        ("a", "local:///a", {}),
        ("b", "ssh://h/b", {"allowed-projects": ["chem"]}),
    ]
    removed = userfile.edit(path, lambda e: userfile.remove_entry(e, "a"))
    assert removed == {"label": "a", "uri": "local:///a"}
    clusters = read_user_registry(path)
    assert [(c.label, c.extra) for c in clusters] == [("b", {"allowed-projects": ["chem"]})]


def test_a_hand_written_file_keeps_its_unlabelled_entries_and_extra_keys(tmp_path):
    path = tmp_path / "delegate.yaml"
    path.write_text(
        "delegate:\n"
        "  - local:///old/form\n"
        "  - label: x\n"
        "    uri: ssh://x/y\n"
        "    users: [alice, bob]\n"
        "    weight: 3\n"
    )
    os.chmod(path, 0o640)
    userfile.edit(str(path), lambda e: (userfile.add_entry(e, "new", "local:///n"), None))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    entries = userfile.read_entries(str(path))
    assert entries == [
        "local:///old/form",
        {"label": "x", "uri": "ssh://x/y", "users": ["alice", "bob"], "weight": 3},
        {"label": "new", "uri": "local:///n"},
    ]
    # An entry without a label is removed by its URI.
    left, removed = userfile.remove_entry(entries, "local:///old/form")
    assert removed == "local:///old/form" and len(left) == 2


def test_duplicates_are_refused():
    entries = [{"label": "a", "uri": "local:///tmp/a"}, "ssh://h/x"]
    with pytest.raises(UserFileError, match="remote 'a' already exists"):
        userfile.add_entry(entries, "a", "local:///other")
    with pytest.raises(UserFileError, match="already in the registry as 'a'"):
        userfile.add_entry(entries, "b", "local:///tmp//a/")
    with pytest.raises(UserFileError, match="without a label"):
        userfile.add_entry(entries, "b", "ssh://h/x")


@pytest.mark.parametrize(
    "label, message",
    [
        ("a b", "white space"),
        ("a:b", "':' or '/'"),
        ("a/b", "':' or '/'"),
        ("a\x01", "control characters"),
        ("", "non-empty"),
        ("least_pending", "the name of a policy"),
        ("mine", "the name of a policy"),
    ],
)
def test_labels_the_plugin_would_refuse(label, message):
    with pytest.raises(UserFileError, match=message):
        userfile.check_label(label, ("random", "least_pending", "mine"))


def test_settings():
    assert userfile.parse_settings(["a=1", "b=[\"x\"]", "c=text", "d=", "e=true"]) == {
        "a": 1,
        "b": ["x"],
        "c": "text",
        "d": "",
        "e": True,
    }
    for bad in ("novalue", "=x", "uri=local:///x", "label=y"):
        with pytest.raises(UserFileError):
            userfile.parse_settings([bad])


def test_a_broken_file_is_not_edited(tmp_path):
    path = tmp_path / "delegate.yaml"
    path.write_text("delegate: [ {label: a, uri: http://x} ]\n")
    before = path.read_text()
    with pytest.raises(UserFileError, match="not a local:// or ssh:// URI"):
        userfile.edit(str(path), lambda e: (userfile.add_entry(e, "b", "local:///b"), None))
    assert path.read_text() == before
    path.write_text("delegate: [\n")
    with pytest.raises(UserFileError, match="not valid YAML"):
        userfile.read_entries(str(path))


def test_a_symlinked_file_stays_a_symlink(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text("delegate: []\n")
    link = tmp_path / "delegate.yaml"
    link.symlink_to(real)
    userfile.edit(str(link), lambda e: (userfile.add_entry(e, "a", "local:///a"), None))
    assert link.is_symlink()
    assert "label: a" in real.read_text()


def test_concurrent_edits_lose_nothing(tmp_path):
    path = str(tmp_path / "delegate.yaml")

    def add(i):
        userfile.edit(path, lambda e: (userfile.add_entry(e, f"t{i}", f"local:///t{i}"), None))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.label for c in read_user_registry(path)) == sorted(f"t{i}" for i in range(20))
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "delegate.yaml"
    path.write_text("delegate:\n- label: a\n  uri: local:///a\n")
    before = path.read_text()

    def broken(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(userfile.os, "replace", broken)
    with pytest.raises(UserFileError, match="I/O error"):
        userfile.edit(str(path), lambda e: (userfile.add_entry(e, "b", "local:///b"), None))
    assert path.read_text() == before
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


# -- asking targets concurrently -------------------------------------------------


class FakeFuture:
    def __init__(self, delay, value=None, error=None):
        self.ready_at = time.monotonic() + delay
        self.value, self.error = value, error

    def is_ready(self):
        return time.monotonic() >= self.ready_at

    def wait_for(self, timeout):
        wait = self.ready_at - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            raise OSError(errno.ETIMEDOUT, "Connection timed out")
        time.sleep(max(0.0, wait))
        return self

    def get(self):
        if self.error:
            raise self.error
        return self.value


@needs_flux
def test_one_slow_target_does_not_hold_up_the_others():
    from flux_delegate.cli import probe

    def open_handle(uri):
        if uri == "local:///hung":
            time.sleep(30)  # never connects in time
        if uri == "local:///refused":
            raise OSError(errno.ECONNREFUSED, "Connection refused")
        return uri

    def questions(delay):
        return {
            "fast": lambda h: FakeFuture(0.0, {"ok": h}),
            "slow": lambda h: FakeFuture(delay, {"late": h}),
            "no": lambda h: FakeFuture(0.0, error=OSError(errno.ENOSYS, "no")),
        }

    start = time.monotonic()
    found = probe.ask(
        [
            ("local:///hung", questions(0)),
            ("local:///quick", questions(0.1)),
            ("local:///silent", questions(30)),
            ("local:///refused", questions(0)),
        ],
        timeout=1.0,
        open_handle=open_handle,
    )
    elapsed = time.monotonic() - start
    assert elapsed < 2.5, elapsed  # not 1s per target, nor 30s
    hung, quick, silent, refused = found
    assert not hung.connected and hung.error == "could not connect within 1s"
    assert quick.connected and quick.answers == {
        "fast": {"ok": "local:///quick"},
        "slow": {"late": "local:///quick"},
    }
    assert quick.errors["no"].errno == errno.ENOSYS and quick.asked == 3
    assert silent.connected and silent.outstanding == {"slow"} and "fast" in silent.answers
    assert not refused.connected and refused.error == "Connection refused"


def test_the_command_layer_never_imports_the_job_manager_layer():
    import ast

    package = os.path.join(os.path.dirname(userfile.__file__), "cli")
    command = os.path.join(os.path.dirname(__file__), "..", "src", "cmd", "flux-remote.py")
    paths = [os.path.join(package, n) for n in os.listdir(package) if n.endswith(".py")]
    for path in paths + [command]:
        with open(path) as fp:
            tree = ast.parse(fp.read(), path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            assert not any("jobmanager" in n or n == "delegate_jobtap" for n in names), path


# -- a local job's delegation, exit codes, flux remote jobs' rows ----------------


def entry(name, timestamp=1.0, **context):
    return {"timestamp": timestamp, "name": name, "context": context}


def test_delegation_read_from_an_eventlog():
    from flux_delegate.cli.delegated import Delegation, describe_failover

    near = {"jobid": 11, "uri": "local:///near", "label": "near"}
    far = {"jobid": 22, "uri": "local:///far"}
    log = [
        entry("submit", 5.0),
        entry("dependency-add", description="delegated"),
        entry("delegate-choice", candidates=[], order=["near", "far"], choice="near"),
        entry("delegated", **near),
    ]
    record = Delegation.from_entries(log)
    assert record.taken and record.current == near and record.target == near
    assert record.t_submit == 5.0 and record.origin(7) == {"jobid": 7, "t_submit": 5.0}
    log.append(entry("delegate-failover", uri="local:///near", label="near", reason="gone", next="far"))
    record = Delegation.from_entries(log)
    assert record.current is None and record.target == near  # shown until the next one
    assert describe_failover(record.failovers[0]) == "near: gone; trying far"
    log += [entry("delegated", **far), entry("finish", status=768), entry("clean")]
    record = Delegation.from_entries(log)
    assert record.current == far and record.delegations == [near, far]
    assert (record.status, record.ended, record.failure) == (768, True, None)
    # A failure before delegation; and text as job-info.lookup returns it.
    text = "\n".join(
        json.dumps(e)
        for e in (
            entry("submit"),
            entry("dependency-add", description="delegated"),
            entry("exception", type="DelegationFailure", severity=0, note="delegate: no"),
            entry("clean"),
        )
    )
    record = Delegation.from_text(text + "\nnot json\n")
    assert record.taken and record.target is None and record.failure == "delegate: no"
    # A job the plugin never took on; a non-fatal exception is not its end.
    record = Delegation.from_entries(
        [entry("submit"), entry("exception", type="x", severity=1, note="")]
    )
    assert not record.taken and record.exception is None


@needs_flux
def test_exit_codes_as_flux_job_attach_reports_them():
    from flux_delegate.cli.follow import exit_code

    assert exit_code(0) == (0, None)
    assert exit_code(3 << 8) == (3, "task(s) exited with exit code 3")
    assert exit_code(143 << 8) == (143, "task(s) Terminated")
    assert exit_code(9) == (137, "job shell Killed")


@needs_flux
def test_jobs_rows_and_filters():
    import flux.constants
    from flux.job import JobInfo

    from flux_delegate.cli.delegated import Delegation
    from flux_delegate.cli.jobs import NoJobID, Row, matches, state_masks

    states, results = state_masks(["running", "failed"])
    inactive = flux.constants.FLUX_JOB_STATE_INACTIVE
    run = flux.constants.FLUX_JOB_STATE_RUN
    failed = flux.constants.FLUX_JOB_RESULT_FAILED
    completed = flux.constants.FLUX_JOB_RESULT_COMPLETED
    assert matches(JobInfo({"id": 1, "state": run}), states, results)
    assert matches(JobInfo({"id": 1, "state": inactive, "result": failed}), states, results)
    assert not matches(JobInfo({"id": 1, "state": inactive, "result": completed}), states, results)
    with pytest.raises(ValueError):
        state_masks(["bogus"])
    assert NoJobID().f58 == "" and f"{NoJobID():>4}" == "    "

    depend = flux.constants.FLUX_JOB_STATE_DEPEND
    local = JobInfo({"id": 10, "state": depend, "name": "sh", "t_submit": 5.0, "userid": 0})
    waiting = Row(local, Delegation.from_entries([entry("dependency-add", description="delegated")]))
    assert (waiting.note, waiting.remote_id, waiting.target, waiting.exitcode) == (
        "not delegated yet", "", "", ""
    )
    record = Delegation.from_entries([entry("delegated", jobid=99, uri="local:///far", label="far")])
    row = Row(local, record)
    assert (int(row.remote_id), row.target, row.uri) == (99, "far", "local:///far")
    row.target_state, row.problem = "unreachable", "unreachable: gone"
    assert row.note == "unreachable: gone" and row.effective is local
    row.problem = None
    row.remote = JobInfo(
        {"id": 99, "state": inactive, "result": failed, "waitstatus": 5 << 8, "t_run": 1.0,
         "t_cleanup": 3.5, "nnodes": 2, "nodelist": "n[1-2]"}
    )
    assert (row.exitcode, row.result, row.runtime, row.nnodes) == (5, "FAILED", 2.5, 2)
    shown = row.as_dict()
    assert (shown["remote_id"], shown["remote_jobid"], shown["exitcode"]) == (99, row.remote_id.f58, 5)
    assert shown["remote"]["returncode"] == 5 and shown["status"] == "DEPEND"
