"""pytest configuration: integration tests run on real Flux instances.

Tests marked 'integration' need flux-core and the delegate.so built by
'make check' (DELEGATE_PLUGIN).  Without them they are skipped, and the run
ends with a loud count of what was skipped and why.
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from flux_instance import HANDLER, PLUGIN, PYTHONPATH, FluxInstance  # noqa: E402

# The package under test, before any installed copy.
sys.path.insert(0, PYTHONPATH)

# No test reads or writes the user's own registry file: every instance
# started here (and every 'flux remote' run) gets an empty configuration
# directory of this session's, unless a test names a registry itself.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="delegate-tests-config-")
os.environ.pop("FLUX_DELEGATE_REGISTRY", None)


def integration_unavailable():
    """Why integration tests cannot run here, or None if they can."""
    if not shutil.which("flux"):
        return "flux-core is not installed (no 'flux' command on PATH)"
    if not PLUGIN:
        return "DELEGATE_PLUGIN is not set (run the tests with 'make check')"
    if not os.path.exists(PLUGIN):
        return f"{PLUGIN} does not exist (run 'make' first)"
    if not HANDLER or not os.path.exists(HANDLER):
        return "DELEGATE_HANDLER does not name the handler file"
    return None


UNAVAILABLE = integration_unavailable()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs real Flux instances and delegate.so"
    )


def pytest_collection_modifyitems(config, items):
    if UNAVAILABLE is None:
        return
    skip = pytest.mark.skip(reason=f"integration test: {UNAVAILABLE}")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly how much was skipped for want of flux-core."""
    skipped = terminalreporter.stats.get("skipped", [])
    integration = [r for r in skipped if "integration test:" in str(r.longrepr)]
    bindings = [r for r in skipped if "flux-core's Python bindings" in str(r.longrepr)]
    if not integration and not bindings:
        return
    bar = "!" * 72
    say = lambda text: terminalreporter.write_line(text, red=True, bold=True)  # noqa
    say(bar)
    if integration:
        say(f"{len(integration)} INTEGRATION TESTS SKIPPED: {UNAVAILABLE}")
        say("Nothing that needs a Flux broker was tested.")
    if bindings:
        say(f"{len(bindings)} unit tests skipped: flux-core's Python bindings are missing")
    say(bar)


def start_instance(request, **kwargs):
    instance = FluxInstance(**kwargs).start()
    request.addfinalizer(instance.cleanup)
    return instance


@pytest.fixture(scope="module")
def target(request):
    """A target instance of its own (a second 'flux start')."""
    return start_instance(request, name="target")


@pytest.fixture(scope="module")
def source(request):
    """A source instance with delegate.so loaded."""
    instance = start_instance(request, name="source")
    instance.load_plugin()
    return instance


@pytest.fixture
def fresh_source(request):
    """A source instance of its own for one test, plugin not loaded."""
    return start_instance(request, name="fresh-source")


@pytest.fixture
def quiet_source(request):
    """A source instance of its own, plugin not loaded, whose broker opens
    and closes no files by itself after a submit: its job-ingest runs no
    validator (a process it keeps, with three sockets to it, for 5 s after
    the last submit).  For tests that count the broker's open files."""
    return start_instance(
        request, name="quiet-source", config="[ingest.validator]\ndisable = true\n"
    )
