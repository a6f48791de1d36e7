"""Measure flux-delegate on real instances: 'make benchmark' runs it.

  delegation latency  local submit -> "delegated" event (remote job exists)
  mirror lag          remote "clean" -> local "clean" (both on this host's
                      clock, so the difference is meaningful)
  throughput          N delegated jobs submitted at once, all completed
  plain-job overhead  N plain jobs with and without the plugin loaded
  responsiveness      during a burst of B delegated jobs, how long a plain
                      local job takes to start, and the job-manager's ping

Usage: benchmark.py [--jobs N] [--burst B]   (DELEGATE_PLUGIN /
DELEGATE_HANDLER as for the tests).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
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


def probe_responsiveness(source, seconds=None, until=None, interval=0.5):
    """Every interval: the time a plain local job takes from submit to its
    start event, and the job-manager's ping round trip.  Runs for seconds,
    or until until() is true.  Returns (start latencies, ping times)."""
    starts, pings = [], []
    deadline = time.time() + seconds if seconds else None
    while (deadline and time.time() < deadline) or (until and not until()):
        tick = time.time()
        proc = source.run("ping", "-c", "1", "job-manager", check=False, timeout=120)
        match = re.search(r"time=([0-9.]+) ms", proc.stdout)
        if match:
            pings.append(float(match.group(1)) / 1000)
        jobid = source.submit("true")
        events_ = {e["name"]: e for e in source.eventlog(jobid)}
        while "start" not in events_:
            source.run("job", "wait-event", "-t", "60", jobid, "start", check=False, timeout=90)
            events_ = {e["name"]: e for e in source.eventlog(jobid)}
        starts.append(events_["start"]["timestamp"] - events_["submit"]["timestamp"])
        time.sleep(max(0.0, interval - (time.time() - tick)))
    return starts, pings


def broker_resources(instance):
    """(threads, open fds, RSS in MiB) of an instance's broker process."""
    pid = int(instance.run("getattr", "broker.pid").stdout)
    with open(f"/proc/{pid}/status") as fp:
        rss = next(int(line.split()[1]) for line in fp if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd")), rss / 1024


def burst(source, target, count):
    """count delegated jobs submitted at once, with a plain job started
    every half second meanwhile; then what the plugin holds afterwards."""
    before = broker_resources(source)
    idle_starts, idle_pings = probe_responsiveness(source, seconds=5)
    start = time.time()
    proc = subprocess.Popen(
        [source_flux(), "submit", f"--cc=1-{count}", "--quiet", "--wait",
         f"--dependency=delegate:{target.uri}", "true"],
        env=source.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    done = threading.Event()
    threading.Thread(target=lambda: (proc.wait(), done.set()), daemon=True).start()
    busy_starts, busy_pings = probe_responsiveness(source, until=done.is_set)
    wall = time.time() - start
    print(f"burst of {count} delegated jobs: {wall:.1f} s, submit to all clean"
          f" (exit {proc.returncode})")
    summary("plain start, idle", idle_starts)
    summary("plain start, burst", busy_starts)
    summary("jm ping, idle", idle_pings)
    summary("jm ping, burst", busy_pings)
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    after = broker_resources(source)
    print(f"  after: jobs held {query['jobs']}, watchers {query['watchers']},"
          f" connections {len(query['connections'])}, helper threads {query['helper-threads']},"
          f" admission {query['admission']}")
    print(f"  broker threads {before[0]} -> {after[0]}, fds {before[1]} -> {after[1]},"
          f" RSS {before[2]:.0f} -> {after[2]:.0f} MiB")
    # flux's own floor: the same probes while count plain jobs, held
    # (urgency 0) so that they take no resources, are submitted at once.
    proc = subprocess.Popen(
        [source_flux(), "submit", f"--cc=1-{count}", "--quiet", "--urgency=0", "true"],
        env=source.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    floor_starts, floor_pings = probe_responsiveness(source, seconds=8)
    proc.wait()
    source.run("cancel", "--all", "--states=pending", check=False, timeout=120)
    print(f"flux alone, {count} held plain jobs submitted at once (the floor):")
    summary("plain start", floor_starts)
    summary("jm ping", floor_pings)


def source_flux():
    from flux_instance import FLUX

    return FLUX


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
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
        if args.burst:
            burst(source, target, args.burst)
    finally:
        source.cleanup()
        target.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
