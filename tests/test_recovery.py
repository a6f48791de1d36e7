"""A submit whose answer is lost (the source restarts, or the plugin is
reloaded, while the target is still taking the job) neither runs the job
twice nor loses it: the target is searched for the job by its origin."""

import json
import os
import subprocess
import tempfile
import time

import pytest
from conftest import start_instance
from flux_instance import FLUX, PLUGIN, FluxInstance, plugin_conf_toml

pytestmark = pytest.mark.integration

#: A job-ingest validator plugin that takes its time, and rejects as many
#: jobs as its control file says: a target slow to answer submits.
SLOW_VALIDATOR = """
import json, time
from flux.job.validator import ValidatorPlugin

CONTROL = {control!r}

class Validator(ValidatorPlugin):
    def validate(self, args):
        with open(CONTROL) as fp:
            control = json.load(fp)
        time.sleep(control["sleep"])
        if control["reject"] > 0:
            control["reject"] -= 1
            with open(CONTROL, "w") as fp:
                json.dump(control, fp)
            raise ValueError("rejected by the slow test validator")
"""

SUBMIT_TIMEOUT = 5  # seconds; the validator takes 3


class SlowTarget:
    def __init__(self, request, restartable=False):
        self.dir = tempfile.mkdtemp(prefix="delegate-slow-ingest-")
        self.control = os.path.join(self.dir, "control.json")
        self.set(sleep=3, reject=0)
        plugin = os.path.join(self.dir, "slow.py")
        with open(plugin, "w") as fp:
            fp.write(SLOW_VALIDATOR.format(control=self.control))
        config = f'[ingest.validator]\nplugins = ["jobspec", "{plugin}"]\n'
        if restartable:  # same URI and jobs after a restart
            rundir, statedir = os.path.join(self.dir, "run"), os.path.join(self.dir, "state")
            os.makedirs(rundir)
            os.makedirs(statedir)
            self.instance = start_instance(
                request, name="slow-ingest", config=config, rundir=rundir, statedir=statedir
            )
        else:
            self.instance = start_instance(request, name="slow-ingest", config=config)

    def set(self, **control):
        with open(self.control, "w") as fp:
            json.dump(control, fp)

    def jobs(self):
        """(id, result) of every job the target has."""
        out = self.instance.run("jobs", "-a", "-n", "-o", "{id.dec} {result}").stdout
        return [tuple((line.split() + [""])[:2]) for line in out.splitlines() if line.strip()]


def submit_and_interrupt(source, target, *command):
    """Submit; once the submit is on its way, unload the plugin."""
    jobid = source.submit(f"--dependency=delegate:{target.instance.uri}", *command)
    source.wait_event(jobid, "delegate-choice")
    source.remove_plugin()
    return jobid


def test_reload_mid_submit_follows_the_job_the_target_made(request, fresh_source):
    target = SlowTarget(request)
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    jobid = submit_and_interrupt(fresh_source, target, "sh", "-c", "exit 4")
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")

    delegated = fresh_source.wait_event(jobid, "delegated", timeout=30)["context"]
    assert delegated["recovered"] is True
    assert fresh_source.status(jobid, timeout=30) == 4
    assert target.jobs() == [(str(delegated["jobid"]), "FAILED")]  # exit 4, once
    dmesg = fresh_source.dmesg()
    assert "left for it to find" in dmesg and "was interrupted" in dmesg
    # The remote job names its origin.
    spec = json.loads(
        target.instance.run("job", "info", str(delegated["jobid"]), "jobspec").stdout
    )
    origin = spec["attributes"]["system"]["delegate-origin"]
    assert origin["jobid"] == int(fresh_source.run("job", "id", jobid).stdout)


def test_reload_mid_submit_the_target_refused_delegates_afresh(request, fresh_source):
    target = SlowTarget(request)
    target.set(sleep=3, reject=1)
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    jobid = submit_and_interrupt(fresh_source, target, "true")
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")

    assert fresh_source.status(jobid, timeout=40) == 0
    events = [e["name"] for e in fresh_source.eventlog(jobid)]
    assert events.count("delegate-choice") == 2  # chosen again, then delegated
    delegated = fresh_source.wait_event(jobid, "delegated")["context"]
    assert "recovered" not in delegated
    assert target.jobs() == [(str(delegated["jobid"]), "COMPLETED")]
    assert "made no job on" in fresh_source.dmesg()


def test_cancel_while_looking_cancels_what_is_found(request, fresh_source):
    target = SlowTarget(request)
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    jobid = submit_and_interrupt(fresh_source, target, "sleep", "300")
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    fresh_source.run("cancel", jobid)
    fresh_source.wait_event(jobid, "clean")

    deadline = time.time() + 30
    while not (target.jobs() and target.jobs()[0][1] == "CANCELED"):
        assert time.time() < deadline, target.jobs()
        time.sleep(0.2)
    assert len(target.jobs()) == 1


def test_source_restart_mid_submit_runs_the_job_once(request):
    target = SlowTarget(request)
    statedir = tempfile.mkdtemp(prefix="delegate-statedir-")
    config = (
        "[job-manager]\n"
        f'plugins = [{{ load = "{PLUGIN}",'
        f" conf = {plugin_conf_toml(**{'submit-timeout': SUBMIT_TIMEOUT})} }}]\n"
    )
    source = FluxInstance(name="restarting-source", config=config, statedir=statedir)
    request.addfinalizer(source.cleanup)
    source.start()
    jobid = source.submit(f"--dependency=delegate:{target.instance.uri}", "sh", "-c", "exit 3")
    source.wait_event(jobid, "delegate-choice")
    source.stop()  # the target is still validating the job
    source.start()

    assert source.status(jobid, timeout=40) == 3
    delegated = source.wait_event(jobid, "delegated")["context"]
    assert delegated["recovered"] is True
    assert target.jobs() == [(str(delegated["jobid"]), "FAILED")]  # exit 3, once


def test_target_killed_mid_submit_is_searched_when_back(request, fresh_source):
    """The connection breaks while the target takes the job: the source
    looks there again once it is back, and delegates afresh as the job was
    never made, rather than failing it or running it twice."""
    target = SlowTarget(request, restartable=True)
    fresh_source.load_plugin(
        None, f"submit-timeout={SUBMIT_TIMEOUT}", "reconnect-interval=0.5"
    )
    jobid = fresh_source.submit(f"--dependency=delegate:{target.instance.uri}", "true")
    fresh_source.wait_event(jobid, "delegate-choice")
    # Killed while it validates the job: the job is never made there (a
    # clean shutdown would finish it first), and no answer comes.
    target.instance.kill()
    target.instance.start()

    status = fresh_source.status(jobid, timeout=60)
    assert status == 0, fresh_source.run("job", "eventlog", jobid).stdout
    delegated = fresh_source.wait_event(jobid, "delegated")["context"]
    assert target.jobs() == [(str(delegated["jobid"]), "COMPLETED")]
    dmesg = fresh_source.dmesg()
    assert "was interrupted" in dmesg, dmesg[-3000:]


def test_recovery_looks_through_every_job_of_the_same_name(request, fresh_source):
    """Other jobs on the target with the same name (here three, held): the
    one with this job's origin is found among them, and no other taken."""
    target = SlowTarget(request)
    target.set(sleep=0, reject=0)
    others = [
        target.instance.submit("--urgency=hold", "sleep", "1") for _ in range(3)
    ]
    target.set(sleep=3, reject=0)
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    jobid = submit_and_interrupt(fresh_source, target, "sleep", "1")
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")

    assert fresh_source.status(jobid, timeout=40) == 0
    delegated = fresh_source.wait_event(jobid, "delegated")["context"]
    assert delegated["recovered"] is True
    jobs = dict(target.jobs())
    assert len(jobs) == 4 and jobs[str(delegated["jobid"])] == "COMPLETED"
    for other in others:  # untouched: still held
        state = target.instance.run("jobs", "-n", "-o", "{state}", other).stdout.strip()
        assert state == "SCHED", state


def test_cancel_mid_submit_then_reload_withdraws_the_late_job(request, fresh_source):
    """Canceled while the target takes the job, then the plugin reloaded:
    the job the target makes anyway is canceled there, not left to run."""
    target = SlowTarget(request)
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.instance.uri}", "sleep", "300")
    fresh_source.wait_event(jobid, "delegate-choice")
    fresh_source.run("cancel", jobid)
    fresh_source.wait_event(jobid, "clean")
    fresh_source.remove_plugin()
    fresh_source.load_plugin(None, f"submit-timeout={SUBMIT_TIMEOUT}")

    deadline = time.time() + 30
    while not (target.jobs() and target.jobs()[0][1] == "CANCELED"):
        assert time.time() < deadline, target.jobs()
        time.sleep(0.2)
    assert len(target.jobs()) == 1


#: A job-info service whose every answer is text that is not UTF-8.
NOT_UTF8_JOB_INFO = r"""
import flux
h = flux.Flux()
h.service_register("job-info").get()
def answer(h, t, msg, arg):
    h.respond(msg, b'{"jobspec": "\xff\xfe"}')
keep = h.msg_watcher_create(answer, topic_glob="job-info.*")
keep.start()
print("ready", flush=True)
h.reactor_run()
"""


def test_a_target_answering_text_that_is_not_utf8_is_the_targets_error(request, fresh_source):
    """The search's lookups are answered with text that is not UTF-8: an
    unreadable answer from the target (EPROTO), searched again until
    reconnect-timeout, then the job fails saying so, not a handler error,
    and nothing is submitted twice."""
    target = SlowTarget(request)
    options = (f"submit-timeout={SUBMIT_TIMEOUT}", "reconnect-timeout=3", "reconnect-interval=0.5")
    fresh_source.load_plugin(None, *options)
    jobid = submit_and_interrupt(fresh_source, target, "true")
    target.instance.run("module", "remove", "job-info")
    service = subprocess.Popen(
        [FLUX, "python", "-c", NOT_UTF8_JOB_INFO],
        env=target.instance.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    request.addfinalizer(service.wait)
    request.addfinalizer(service.kill)
    assert service.stdout.readline().strip() == "ready"
    fresh_source.load_plugin(None, *options)
    fresh_source.wait_event(jobid, "clean", timeout=90)
    note = fresh_source.exception(jobid)["note"]
    assert "cannot be told" in note and "unreadable answer: UnicodeDecodeError" in note, note
    assert "handler error" not in fresh_source.dmesg()
    assert len(target.jobs()) == 1  # the one the interrupted submit made
