"""Measure flux-delegate on real instances: 'make benchmark' runs it.

  delegation latency  local submit -> "delegated" event (remote job exists)
  mirror lag          remote "clean" -> local "clean" (both on this host's
                      clock, so the difference is meaningful)
  throughput          N delegated jobs submitted at once, all completed
  plain-job overhead  N plain jobs with and without the plugin loaded

Usage: benchmark.py [--jobs N]   (DELEGATE_PLUGIN / DELEGATE_HANDLER as for
the tests).
"""

import argparse
import json
import statistics
import sys
import time

from flux_instance import FluxInstance


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(name, values, unit="ms", scale=1000.0):
    values = [v * scale for v in values]
    print(
        f"  {name:<22} median {statistics.median(values):8.1f} {unit}"
        f"   p95 {percentile(values, 95):8.1f} {unit}"
        f"   max {max(values):8.1f} {unit}   (n={len(values)})"
    )


def events(instance, jobid):
    return {e["name"]: e for e in instance.eventlog(jobid)}


def run_jobs(instance, count, *args):
    """Submit count jobs at once and wait for all (one flux submit --wait);
    return (ids, seconds)."""
    start = time.time()
    out = instance.run("submit", f"--cc=1-{count}", "--wait", *args, timeout=600)
    return out.stdout.split(), time.time() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    n = args.jobs

    target = FluxInstance(name="bench-target").start()
    source = FluxInstance(name="bench-source").start()
    try:
        print(f"flux-delegate benchmark: {n} jobs, target and source on this host")

        # Plain jobs before the plugin is loaded, then with it.
        _, plain_without = run_jobs(source, n, "true")
        source.load_plugin()
        _, plain_with = run_jobs(source, n, "true")

        # The first job pays for the connection and the target's warm-up.
        first = time.time()
        warm = source.submit(f"--dependency=delegate:{target.uri}", "true")
        source.status(warm)
        first = time.time() - first

        ids, delegated_wall = run_jobs(
            source, n, f"--dependency=delegate:{target.uri}", "true"
        )
        latency, lag = [], []
        for jobid in ids:
            local = events(source, jobid)
            latency.append(local["delegated"]["timestamp"] - local["submit"]["timestamp"])
            rid = str(local["delegated"]["context"]["jobid"])
            remote = events(target, rid)
            lag.append(local["clean"]["timestamp"] - remote["clean"]["timestamp"])

        print(f"first delegated job      {first * 1000:8.1f} ms (opens the connection)")
        print("delegated jobs ('true'), connection open:")
        summary("delegation latency", latency)
        summary("mirror lag", lag)
        print(f"  throughput             {n / delegated_wall:8.1f} jobs/s"
              f"   ({n} jobs in {delegated_wall:.2f} s, submit to all clean)")
        print("plain jobs ('true') in the source:")
        print(f"  without the plugin     {n / plain_without:8.1f} jobs/s ({plain_without:.2f} s)")
        print(f"  with the plugin        {n / plain_with:8.1f} jobs/s ({plain_with:.2f} s)")
        # How fast a job no target can run fails (pre-flight, no remote job).
        infeasible = []
        for _ in range(10):
            jobid = source.submit(f"--dependency=delegate:{target.uri}", "-n", "1024", "true")
            source.run("job", "wait-event", jobid, "clean")
            local = events(source, jobid)
            infeasible.append(local["exception"]["timestamp"] - local["submit"]["timestamp"])
        print("jobs no target can run:")
        summary("submit to failure", infeasible)
        query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
        print(f"  connections opened     {len(query['connections'])}")
    finally:
        source.cleanup()
        target.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
