"""What the unit tests of the pure modules share: flux-core's bindings,
when they are installed (the pure modules import without them)."""

import pytest

try:
    from flux.job import JobID
except ImportError:
    JobID = None

needs_flux = pytest.mark.skipif(
    JobID is None, reason="needs flux-core's Python bindings (flux-core is not installed)"
)
