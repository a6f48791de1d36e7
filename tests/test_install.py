"""After 'make install': the plugin loads by bare name with its handler."""

import json
import os

import pytest

pytestmark = pytest.mark.integration


def test_installed_plugin_loads_by_bare_name(fresh_source, target):
    pluginpath = fresh_source.run("config", "builtin", "jobtap_pluginpath").stdout.strip()
    installed = os.path.join(pluginpath, "delegate.so")
    if not os.path.exists(installed):
        pytest.skip(f"delegate.so is not installed in {pluginpath} (run make install)")
    fresh_source.run("jobtap", "load", "delegate.so")
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    assert query["path"] == installed
    assert query["handler"].endswith("/flux-delegate/delegate_handler.py")
    assert os.path.exists(query["handler"]) and query["handler_error"] is None
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0
