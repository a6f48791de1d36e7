"""ssh:// targets, through a real sshd on loopback (started here, as the
tests' own user, with keys of its own)."""

import os
import shutil
import socket
import subprocess
import time

import pytest
from conftest import start_instance

pytestmark = pytest.mark.integration

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(port, ssh wrapper for FLUX_SSH) of a private sshd on 127.0.0.1."""
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed (no sshd)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True
        )
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
        f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    if os.getuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
    wrapper = d / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec ssh -i {d}/client_key -o BatchMode=yes -o StrictHostKeyChecking=no"
        " -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \"$@\"\n"
    )
    wrapper.chmod(0o755)
    deadline = time.time() + 10
    while time.time() < deadline:
        probe = subprocess.run(
            [str(wrapper), "-p", str(port), "127.0.0.1", "true"], capture_output=True
        )
        if probe.returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"sshd did not accept logins: {probe.stderr.decode()}")
    yield port, str(wrapper)
    proc.kill()
    proc.wait()


def test_delegate_over_ssh(request, sshd, target):
    port, wrapper = sshd
    source = start_instance(request, name="ssh-source", env={"FLUX_SSH": wrapper})
    source.load_plugin()
    path = target.uri[len("local://"):]
    uri = f"ssh://127.0.0.1:{port}{path}"
    jobid = source.submit(f"--dependency=delegate:{uri}", "--job-name=via-ssh", "sh", "-c", "exit 5")
    context = source.wait_event(jobid, "delegated", timeout=60)["context"]
    assert context["uri"] == uri
    assert source.status(jobid, timeout=60) == 5
    rid = target.run("job", "id", "--to=f58", str(context["jobid"])).stdout.strip()
    assert target.run("jobs", "-n", "-o", "{name}", rid).stdout.strip() == "via-ssh"
    # Cancel over ssh too.
    jobid = source.submit(f"--dependency=delegate:{uri}", "sleep", "300")
    rid = str(source.wait_event(jobid, "delegated", timeout=60)["context"]["jobid"])
    target.wait_event(rid, "start")
    source.run("cancel", jobid)
    assert target.wait_event(rid, "exception")["context"]["type"] == "cancel"


def test_ssh_login_refused(request, sshd):
    port, _ = sshd
    # Without the key (plain ssh), the login is refused: a clear failure.
    source = start_instance(
        request, name="ssh-refused",
        env={"FLUX_SSH": "ssh -o BatchMode=yes -o StrictHostKeyChecking=no"},
    )
    source.load_plugin()
    uri = f"ssh://127.0.0.1:{port}/tmp/nonexistent/local-0"
    jobid = source.submit(f"--dependency=delegate:{uri}", "true")
    source.wait_event(jobid, "clean", timeout=60)
    exc = source.exception(jobid)
    assert exc["type"] == "DelegationFailure" and f"cannot connect to {uri}" in exc["note"]
