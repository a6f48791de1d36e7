"""A source instance that restarts neither kills nor forgets remote work."""

import os
import tempfile

import pytest
from flux_instance import PLUGIN, FluxInstance, plugin_conf_toml

pytestmark = pytest.mark.integration

EXAMPLE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "delegate.toml")


def example_config():
    """delegate.toml as shipped, pointed at the plugin and handler under test."""
    with open(EXAMPLE_CONFIG) as fp:
        text = fp.read()
    installed = '{ load = "delegate.so" }'
    assert installed in text
    return text.replace(
        installed, f'{{ load = "{PLUGIN}", conf = {plugin_conf_toml()} }}'
    )


def test_source_restart_during_remote_run(request, target):
    statedir = tempfile.mkdtemp(prefix="delegate-statedir-")
    source = FluxInstance(name="restarting", config=example_config(), statedir=statedir)
    request.addfinalizer(source.cleanup)
    source.start()
    jobid = source.submit(
        f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 3; exit 5"
    )
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    target.wait_event(rid, "start")

    # Shut the source down while the remote job runs: the local job is
    # pending (DEPEND), so shutdown does not cancel it, nor the remote one.
    source.stop()
    assert target.run("jobs", "-n", "-o", "{state}", rid).stdout.strip() == "RUN"

    source.start()
    assert source.status(jobid, timeout=30) == 5
    assert target.exception(rid) is None
    assert f"{jobid}: following" in source.dmesg() and " again" in source.dmesg()
