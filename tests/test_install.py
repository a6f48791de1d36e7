"""After 'make install': the plugin loads by bare name with its handler and
the installed package, which flux's own Python finds with no variable."""

import json
import os
import subprocess

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
    # The installed package, beside flux-core's bindings: what a flux-NAME
    # command run by 'flux' imports, with no environment variable.
    package = os.path.join(query["pythonpath"], "flux_delegate", "jobmanager", "entry.py")
    assert os.path.exists(package), package
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLUX_"))}
    found = subprocess.run(
        ["flux", "python", "-c", "import flux_delegate.targets as t; print(t.__file__)"],
        env=env, capture_output=True, text=True, cwd="/",
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().startswith(query["pythonpath"] + "/flux_delegate/")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0


def test_installed_man_pages_are_what_flux_help_shows(fresh_source):
    """make install puts flux-remote(1) and flux-delegate(7) in flux's man
    path (built where docutils' rst2man is): 'flux help remote' shows it."""
    man_path = fresh_source.run("config", "builtin", "man_path").stdout.strip()
    page = os.path.join(man_path, "man1", "flux-remote.1")
    if not os.path.exists(page):
        pytest.skip(f"{page} is not installed (make install, with rst2man)")
    assert os.path.exists(os.path.join(man_path, "man7", "flux-delegate.7"))
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80")
    shown = subprocess.run(
        ["flux", "help", "remote"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "flux remote attach" in shown.stdout and "EXIT STATUS" in shown.stdout
