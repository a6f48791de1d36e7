"""Delegation on real Flux instances: the job's whole life, both ways."""

import json

import pytest
from flux_instance import FluxClient

pytestmark = pytest.mark.integration


def delegated(source, jobid, timeout=30):
    """The context of the job's 'delegated' event (waits for it)."""
    return source.wait_event(jobid, "delegated", timeout=timeout)["context"]


def remote_id(target, context):
    """The remote job id of a 'delegated' context, as flux prints it."""
    return target.run("job", "id", "--to=f58", str(context["jobid"])).stdout.strip()


def test_delegated_job_runs_on_target_and_completes(source, target):
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "--job-name=hello", "true"
    )
    context = delegated(source, jobid)
    assert isinstance(context["jobid"], int)
    assert context["uri"] == target.uri
    assert source.status(jobid) == 0

    rid = remote_id(target, context)
    remote = target.run("jobs", "-n", "-o", "{name} {result}", rid).stdout.split()
    assert remote == ["hello", "COMPLETED"]
    # The local job ran nowhere: no resources were allocated from the
    # scheduler (alloc-bypass) and nothing was executed locally.
    names = [e["name"] for e in source.eventlog(jobid)]
    assert names.index("delegated") < names.index("dependency-remove")
    alloc = [e for e in source.eventlog(jobid) if e["name"] == "alloc"]
    assert alloc[0]["context"] == {"bypass": True}


@pytest.mark.parametrize("code", [1, 3, 42])
def test_local_job_exits_with_the_remote_exit_code(source, target, code):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", f"exit {code}")
    assert source.status(jobid) == code
    finish = source.wait_event(jobid, "finish")
    assert finish["context"]["status"] == code << 8


def test_remote_job_killed_by_signal(source, target):
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "sh", "-c", "kill -9 $$"
    )
    rid = remote_id(target, delegated(source, jobid))
    assert source.status(jobid) == 128 + 9
    # Whatever the target reports, the local job reports the same.
    remote_status = target.wait_event(rid, "finish")["context"]["status"]
    assert source.wait_event(jobid, "finish")["context"]["status"] == remote_status


def test_remote_exception_fails_local_job(source, target):
    # A 1s time limit on a 60s sleep: the target raises a timeout exception.
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "-t", "1s", "sleep", "60"
    )
    context = delegated(source, jobid)
    assert source.status(jobid) != 0
    exc = source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert exc["severity"] == 0
    rid = remote_id(target, context)
    assert rid in exc["note"]
    assert "timeout" in exc["note"]
    assert target.uri in exc["note"]


def test_local_cancel_cancels_remote_job(source, target):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    context = delegated(source, jobid)
    rid = remote_id(target, context)
    target.wait_event(rid, "start")

    source.run("cancel", jobid)
    remote_exc = target.wait_event(rid, "exception")["context"]
    assert remote_exc["type"] == "cancel"
    assert jobid in remote_exc["note"]
    target.wait_event(rid, "clean")
    assert source.exception(jobid)["type"] == "cancel"


def test_cancel_in_target_fails_local_job(source, target):
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    rid = remote_id(target, delegated(source, jobid))
    target.wait_event(rid, "start")

    target.run("cancel", "--message=admin says no", rid)
    source.wait_event(jobid, "clean")
    exc = source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert rid in exc["note"] and "canceled" in exc["note"]
    assert "admin says no" in exc["note"]


def test_cancel_while_waiting_for_other_dependency(source, target):
    # Held by afterok on a job that then completes successfully: canceled
    # before that, the job must never be delegated.
    blocker = source.submit("sleep", "2")
    jobid = source.submit(
        f"--dependency=afterok:{blocker}",
        f"--dependency=delegate:{target.uri}",
        "--job-name=never-delegated",
        "true",
    )
    source.run("cancel", jobid)
    source.wait_event(jobid, "clean")
    assert source.status(blocker) == 0
    control = source.submit(f"--dependency=afterok:{blocker}", f"--dependency=delegate:{target.uri}", "true")
    assert source.status(control) == 0  # the plugin is alive and delegating
    names = [e["name"] for e in source.eventlog(jobid)]
    assert "delegated" not in names and "delegate-choice" not in names
    assert "never-delegated" not in [j["name"] for j in target.jobs()]


def test_held_job_is_delegated_only_when_released(source, target):
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "--urgency=hold", "--job-name=held", "true"
    )
    source.wait_event(jobid, "validate")
    proc = source.run("job", "wait-event", "-t", "2", jobid, "delegated", check=False)
    assert proc.returncode != 0  # still held, not delegated
    assert "held" not in [j["name"] for j in target.jobs()]
    source.run("job", "urgency", jobid, "default")
    assert source.status(jobid) == 0
    assert "held" in [j["name"] for j in target.jobs()]


def test_afterok_is_honoured_before_delegation(source, target):
    first = source.submit("sleep", "2")
    jobid = source.submit(
        f"--dependency=afterok:{first}",
        f"--dependency=delegate:{target.uri}",
        "true",
    )
    finished = source.wait_event(first, "finish")["timestamp"]
    context = delegated(source, jobid)
    assert source.status(jobid) == 0
    delegated_at = [e for e in source.eventlog(jobid) if e["name"] == "delegated"]
    assert delegated_at[0]["timestamp"] >= finished
    assert context["uri"] == target.uri


def test_afterok_failure_means_never_delegated(source, target):
    first = source.submit("sh", "-c", "sleep 1; exit 1")
    jobid = source.submit(
        f"--dependency=afterok:{first}",
        f"--dependency=delegate:{target.uri}",
        "--job-name=after-failed",
        "true",
    )
    source.wait_event(jobid, "clean")
    assert source.exception(jobid)["type"] == "dependency"
    assert "delegated" not in [e["name"] for e in source.eventlog(jobid)]
    assert "after-failed" not in [j["name"] for j in target.jobs()]


def test_jobspec_is_preserved_without_local_dependencies(source, target, tmp_path):
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}",
        "--env=DELEGATE_TEST_VALUE=carried-over",
        f"--cwd={tmp_path}",
        "--job-name=preserved",
        "-t",
        "5m",
        "--setattr=user.site=test",
        "sh",
        "-c",
        'echo "$DELEGATE_TEST_VALUE $(pwd)"',
    )
    rid = remote_id(target, delegated(source, jobid))
    assert source.status(jobid) == 0
    output = target.run("job", "attach", rid).stdout.strip()
    assert output == f"carried-over {tmp_path}"
    spec = json.loads(target.run("job", "info", rid, "jobspec").stdout)
    system = spec["attributes"]["system"]
    assert "dependencies" not in system
    assert system["duration"] == 300
    assert system["job"]["name"] == "preserved"
    assert spec["attributes"]["user"]["site"] == "test"


def test_plain_jobs_are_untouched(source, target):
    before = len(target.jobs())
    jobid = source.submit("sh", "-c", "exit 5")
    assert source.status(jobid) == 5
    names = [e["name"] for e in source.eventlog(jobid)]
    assert "dependency-add" not in names and "delegated" not in names
    assert "alloc" in names and "bypass" not in json.dumps(source.eventlog(jobid))
    assert len(target.jobs()) == before


def test_broker_pid_as_target(source, target):
    """pid:PID of the target's broker (flux's own pid resolver)."""
    pid = target.run("getattr", "broker.pid").stdout.strip()
    jobid = source.submit(f"--dependency=delegate:pid:{pid}", "sh", "-c", "exit 2")
    assert delegated(source, jobid)["uri"] == target.uri
    assert source.status(jobid) == 2


def test_job_id_path_into_a_grandchild_instance(source, tmp_path):
    """ƒA/ƒB: job B of the instance that job A of the source runs (the
    lookup of B goes to A's instance, as a request to a target)."""
    child = source.run(
        "batch", "-n1", f"--output={tmp_path}/child.out", "--wrap", "sleep", "300"
    ).stdout.strip()
    try:
        source.wait_memo(child, "uri", timeout=60)
        child_uri = source.run("uri", "--local", child).stdout.strip()
        inner = FluxClient(child_uri)
        inner.wait_running()
        grandchild = inner.run(
            "batch", "-n1", f"--output={tmp_path}/grandchild.out", "--wrap", "sleep", "300"
        ).stdout.strip()
        inner.wait_memo(grandchild, "uri", timeout=60)
        jobid = source.submit(
            f"--dependency=delegate:{child}/{grandchild}", "--job-name=in-grandchild",
            "sh", "-c", "exit 3",
        )
        assert source.status(jobid) == 3
        grandchild_uri = inner.run("uri", "--local", grandchild).stdout.strip()
        assert delegated(source, jobid)["uri"] == grandchild_uri
        names = FluxClient(grandchild_uri).run("jobs", "-a", "-n", "-o", "{name}")
        assert names.stdout.split() == ["in-grandchild"]
        # A job id that is not there, one level down: said so, with the path.
        missing = source.submit(f"--dependency=delegate:{child}/ƒ2222222", "true")
        source.wait_event(missing, "clean", timeout=60)
        assert "job ƒ2222222 not found" in source.exception(missing)["note"]
    finally:
        source.run("cancel", child, check=False)


def test_child_instance_job_id_as_target(source, tmp_path):
    # A sub-instance of the source (flux batch), named by its job id: the
    # handler resolves it from job-list's "uri" annotation of the job.
    child = source.run(
        "batch", "-n1", f"--output={tmp_path}/batch.out", "--wrap", "sleep", "300"
    ).stdout.strip()
    try:
        source.wait_memo(child, "uri", timeout=60)
        jobid = source.submit(f"--dependency=delegate:{child}", "--job-name=in-child", "true")
        context = delegated(source, jobid)
        assert context["uri"].startswith("local://")
        assert source.status(jobid) == 0
        child_uri = source.run("uri", "--local", child).stdout.strip()
        assert context["uri"] == child_uri
        names = FluxClient(child_uri).run("jobs", "-a", "-n", "-o", "{name}")
        assert names.stdout.split() == ["in-child"]
    finally:
        source.run("cancel", child, check=False)
