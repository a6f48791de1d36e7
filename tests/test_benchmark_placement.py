"""A smoke of the placement benchmark (make benchmark-placement): a small
trace through the source under earliest_start and least_pending, and the
union; every job ends ok, no remote job is made twice, and the report's
machine-readable lines come out."""

import json
import os
import subprocess

import pytest
from flux_instance import FLUX

pytestmark = pytest.mark.integration

HERE = os.path.dirname(os.path.abspath(__file__))


def test_placement_benchmark_smoke(tmp_path):
    trace = tmp_path / "trace.jsonl"
    jobs = [
        {"idx": 0, "at": 0.0, "cores": 8, "dur": 1.0, "limit": 3},
        {"idx": 1, "at": 0.1, "cores": 8, "dur": 1.0, "limit": 3},
        {"idx": 2, "at": 0.2, "cores": 32, "dur": 0.5, "limit": 2},
        {"idx": 3, "at": 0.3, "cores": 16, "dur": 0.5, "limit": 2},
        {"idx": 4, "at": 0.4, "cores": 1, "dur": 0.5, "limit": 1},
    ]
    trace.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [FLUX, "python", os.path.join(HERE, "benchmark_placement.py"), "--trace", str(trace),
         "--policies", "least_pending,earliest_start", "--json", str(results)],
        capture_output=True, text=True, timeout=600, cwd=HERE,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("placement: ")]
    assert [l.split()[1] for l in lines] == ["policy=least_pending", "policy=earliest_start"]
    assert all(l.endswith("ok=5/5") for l in lines), lines
    data = json.loads(results.read_text())
    for r in data["policies"]:
        assert r["remote_jobs"] == r["referenced"] == 5
        assert r["placed"]["c"] >= 1  # the 32-core job fits only there
    assert data["union"]["ok"] == 5
