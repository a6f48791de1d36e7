"""A reload leaves nothing behind: 'flux jobtap remove delegate.so && flux
jobtap load delegate.so', again and again with connections open and jobs
followed across it, does not make the broker hold more open files."""

import time

import pytest
from flux_instance import fds_grown, settled_fds
from test_recovery import SUBMIT_TIMEOUT, SlowTarget

pytestmark = pytest.mark.integration

RELOADS = 10


def test_reloads_leave_no_open_files_behind(quiet_source, target):
    source = quiet_source
    pid = int(source.run("getattr", "broker.pid").stdout)
    source.load_plugin()
    delegate = f"--dependency=delegate:{target.uri}"
    followed = []  # a sleep job followed across a reload, until ended

    def cycle(i):
        """Reload the plugin with the connection to the target open (a job
        delegated through it ran); every other time with a job followed on
        it too, left running across the reload (a sleep the reload must not
        lose) and ended in the next cycle (the target runs only a couple of
        jobs at once), which needs it still followed then."""
        assert source.status(source.submit(delegate, "true")) == 0
        if followed:
            end(followed.pop())
        if i % 2 == 0:
            followed.append(source.submit(delegate, "sleep", "3600"))
            rid = str(source.wait_event(followed[-1], "delegated")["context"]["jobid"])
            target.wait_event(rid, "start")
        source.remove_plugin()
        source.load_plugin()

    def end(jobid):
        rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
        source.run("cancel", jobid)
        source.wait_event(jobid, "clean")
        target.wait_event(rid, "clean")
        assert source.exception(jobid)["type"] == "cancel"

    def connected():
        """The new load has its connection to the target open again."""
        assert source.status(source.submit(delegate, "true")) == 0

    # Warm-up: what a first load and a first reload open once (the Python
    # interpreter, its modules, libflux's own state) stays for the life of
    # the broker and is not a leak.
    cycle(0)
    connected()
    before = settled_fds(pid)
    for i in range(1, RELOADS + 1):
        cycle(i)
    connected()
    after = settled_fds(pid, at_most=before)
    grown = fds_grown(before, after)
    assert not grown, f"{RELOADS} reloads: {dict(before)} -> {dict(after)}"

    # The job followed across the last reload is followed still.
    end(followed.pop())
    assert not target.run("jobs", "-n", "-o", "{id}").stdout.strip()

    # Closing connections, their watchers and the futures on them raised
    # nothing, not even where no one would see it but the broker's stderr.
    assert "Traceback" not in source.dmesg()
    assert "Exception ignored" not in source.broker_log(tail=None)


def test_a_connection_kept_for_a_late_answer_is_closed_once_answered(request, quiet_source):
    """Unloaded while a submit is in flight for a job canceled meanwhile:
    the connection stays open for the answer (the job the target makes
    anyway is canceled there), then is closed."""
    source = quiet_source
    pid = int(source.run("getattr", "broker.pid").stdout)
    target = SlowTarget(request)
    target.set(sleep=6, reject=0)  # to accept a job: time to look meanwhile
    source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    before = settled_fds(pid)
    jobid = source.submit(f"--dependency=delegate:{target.instance.uri}", "sleep", "300")
    source.wait_event(jobid, "delegate-choice")
    source.run("cancel", jobid)
    source.wait_event(jobid, "clean")
    source.remove_plugin()
    assert fds_grown(before, settled_fds(pid)).get("socket") == 1  # kept open
    source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")

    deadline = time.time() + 30
    while not (target.jobs() and target.jobs()[0][1] == "CANCELED"):
        assert time.time() < deadline, target.jobs()
        time.sleep(0.2)
    after = settled_fds(pid, at_most=before)
    assert not fds_grown(before, after), f"{dict(before)} -> {dict(after)}"
    assert "Exception ignored" not in source.broker_log(tail=None)


#: A handler that counts its plugin.query callbacks in a threading.local:
#: the count goes on only while the thread's Python state is kept.
COUNTING_HANDLER = """
import threading
from flux_delegate.jobmanager import entry
from flux_delegate.jobmanager.entry import *

per_thread = threading.local()

def callback(topic, args, job):
    result = entry.callback(topic, args, job)
    if topic == "plugin.query":
        per_thread.calls = getattr(per_thread, "calls", 0) + 1
        result = dict(result, **{"calls-this-thread": per_thread.calls})
    return result
"""


def test_per_thread_state_survives_a_job_manager_reload(fresh_source, tmp_path):
    """'flux module reload job-manager' runs the job-manager, and so the
    plugin's callbacks, on a new thread: its Python thread state is kept
    from one callback to the next there too (threading.local lasts), as on
    the thread that started Python."""
    import json

    handler = tmp_path / "counting.py"
    handler.write_text(COUNTING_HANDLER)

    def calls():
        return json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)[
            "calls-this-thread"
        ]

    fresh_source.load_plugin(str(handler))
    assert [calls(), calls()] == [1, 2]
    fresh_source.run("module", "reload", "job-manager")
    fresh_source.load_plugin(str(handler))
    assert [calls(), calls(), calls()] == [1, 2, 3]
