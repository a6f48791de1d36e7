"""pytest configuration: integration tests run on real Flux instances.

Tests marked 'integration' need flux-core and the delegate.so built by
'make check' (DELEGATE_PLUGIN).  Without them they are skipped, and the run
ends with a loud count of what was skipped and why.
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from flux_instance import HANDLER, PLUGIN, FluxInstance  # noqa: E402


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
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if "integration test:" in str(report.longrepr)
    ]
    if skipped:
        bar = "!" * 72
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(
            f"{len(skipped)} INTEGRATION TESTS SKIPPED: {UNAVAILABLE}",
            red=True,
            bold=True,
        )
        terminalreporter.write_line(
            "Nothing that needs a Flux broker was tested.", red=True, bold=True
        )
        terminalreporter.write_line(bar, red=True, bold=True)


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
