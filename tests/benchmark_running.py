"""A delegated burst, sampled while it runs (doc/performance.md, "State
that follows the remote job"): N delegated jobs at once to a target of 64
made-up cores (test exec: nothing runs, each job 'runs' 1 to 3 s and ends
with a status of its group), and 'flux jobs' on both sides read every
0.2 s while they run.  Each sample reads the target, the source, the
target again: a local job agrees with its remote job if its state (pending,
running, ended) is the remote job's in either reading of the target.

Then: every local job's status against its remote job's, and its t_run and
t_cleanup ('flux jobs -a') against its remote job's.  Exits 1 if a sample
disagrees or a status is wrong; the times are printed, never pass/fail.

Then (--latency K, 10; 0: not) K delegated jobs to a plain target, one
after another, each writing 3 lines 0.3 s apart, read by 'flux job attach
LOCALID' from before they run: the time from each line's entry in the
remote output eventlog (the shell's timestamp, as the task wrote it) to
the attach printing it; and the mirror lag, remote alloc -> local alloc,
remote finish -> local finish.

    cd tests && flux python benchmark_running.py [--jobs 300] [--latency 10]
"""

import argparse
import collections
import json
import socket
import statistics
import subprocess
import sys
import time

from flux.job import JobID
from flux_instance import FLUX, FluxInstance

#: (run duration, exit code) of the job groups, in turn.
GROUPS = [("1s", 0), ("2s", 1), ("3s", 2), ("1.5s", 3)]


def target_config(cores=64):
    return (
        "[resource]\nnoverify = true\n[[resource.config]]\n"
        f'hosts = "{socket.gethostname()}"\ncores = "0-{cores - 1}"\n'
    )


def kind(state):
    """pending, running or ended, of a 'flux jobs' state."""
    if state == "RUN":
        return "running"
    if state in ("CLEANUP", "INACTIVE"):
        return "ended"
    return "pending"


def remote_states(target):
    out = target.run("jobs", "-a", "-no", "{id.f58} {state}").stdout
    return dict(line.split() for line in out.splitlines())


def local_jobs(source):
    return json.loads(source.run("jobs", "-a", "--json").stdout)["jobs"]


def remote_of(job):
    return job.get("annotations", {}).get("user", {}).get("delegate", {}).get("jobid")


def submit(source, target, n):
    """{local id: expected exit code}: n jobs, GROUPS in turn."""
    expected = {}
    per_group = n // len(GROUPS)
    for i, (duration, code) in enumerate(GROUPS):
        count = per_group if i < len(GROUPS) - 1 else n - per_group * (len(GROUPS) - 1)
        ids = source.run(
            "submit", f"--cc=1-{count}", f"--dependency=delegate:{target.uri}",
            "-S", f"system.exec.test.run_duration={duration}",
            "-S", f"system.exec.test.wait_status={code << 8}",
            "true",
        ).stdout.split()
        expected.update({jobid: code for jobid in ids})
    return expected


def sample(source, target, timeout):
    """Counter of (local state, remote state, agrees) over the samples,
    until no local job is active."""
    samples = collections.Counter()
    deadline = time.time() + timeout
    while time.time() < deadline:
        before = remote_states(target)
        jobs = local_jobs(source)
        after = remote_states(target)
        for job in jobs:
            rid = remote_of(job)
            if rid is None or rid not in after:
                continue
            theirs = {kind(before.get(rid, "SCHED")), kind(after[rid])}
            samples[(job["state"], after[rid], kind(job["state"]) in theirs)] += 1
        if all(job["state"] == "INACTIVE" for job in jobs):
            break
        time.sleep(0.2)
    return samples


def spread(values):
    values = sorted(v * 1000 for v in values)
    return (
        f"p50 {statistics.median(values):.1f} ms, p90 {values[int(len(values) * 0.9)]:.1f} ms,"
        f" max {values[-1]:.1f} ms"
    )


def latency(source, target, k):
    """(output latencies, alloc lags, finish lags) in seconds over k jobs."""
    output, alloc, finish = [], [], []
    for _ in range(k):
        jobid = source.submit(
            f"--dependency=delegate:{target.uri}",
            "sh", "-c", "for k in 1 2 3; do echo x$k; sleep 0.3; done",
        )
        attach = subprocess.Popen(
            [FLUX, "job", "attach", jobid], env=source.env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, text=True,
        )
        seen = [time.time() for _ in attach.stdout]
        attach.wait(timeout=60)
        here = {e["name"]: e["timestamp"] for e in source.eventlog(jobid)}
        rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
        there = {e["name"]: e["timestamp"] for e in target.eventlog(rid)}
        alloc.append(here["alloc"] - there["alloc"])
        finish.append(here["finish"] - there["finish"])
        written = [
            e["timestamp"] for e in target.eventlog(rid, "guest.output")
            if e["name"] == "data" and "data" in e.get("context", {})
        ]
        output += [b - a for a, b in zip(written, seen)]
    return output, alloc, finish


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="delegated jobs at once (300)")
    parser.add_argument("--latency", type=int, default=10, help="jobs timed one by one (10)")
    args = parser.parse_args(argv)
    target = FluxInstance(name="running-target", config=target_config()).start()
    source = FluxInstance(name="running-source").start()
    problems = []
    try:
        source.load_plugin()
        expected = submit(source, target, args.jobs)
        started = time.time()
        samples = sample(source, target, timeout=600)
        print(f"{args.jobs} delegated jobs, sampled for {time.time() - started:.1f} s")
        running = {k: v for k, v in samples.items() if "RUN" in k[:2]}
        agreeing = sum(v for k, v in running.items() if k[2])
        print(f"  samples with a job running on either side: {sum(running.values())},"
              f" agreeing with the remote job: {agreeing}")
        for (here, there, agrees), count in sorted(samples.items()):
            print(f"    local {here:<8} remote {there:<8} {'agrees' if agrees else 'DISAGREES'}  {count}")
        if agreeing != sum(running.values()):
            problems.append("a local job's state disagreed with its remote job's")
        jobs = local_jobs(source)
        remote = {j["id"]: j for j in json.loads(target.run("jobs", "-a", "--json").stdout)["jobs"]}
        wrong = [j for j in expected if source.status(j) != expected[j]]
        print(f"  statuses: {len(expected) - len(wrong)} right, {len(wrong)} wrong")
        if wrong:
            problems.append(f"wrong statuses: {wrong[:5]}")
        run_gap, cleanup_gap = [], []
        for job in jobs:
            there = remote[int(JobID(remote_of(job)))]
            run_gap.append(job["t_run"] - there["t_run"])
            cleanup_gap.append(job["t_cleanup"] - there["t_cleanup"])
        print(f"  t_run, local - remote: {spread(run_gap)}")
        print(f"  t_cleanup, local - remote: {spread(cleanup_gap)}")
    finally:
        source.cleanup()
        target.cleanup()
    if args.latency:
        target = FluxInstance(name="latency-target").start()
        source = FluxInstance(name="latency-source").start()
        try:
            source.load_plugin()
            output, alloc, finish = latency(source, target, args.latency)
        finally:
            source.cleanup()
            target.cleanup()
        print(f"{args.latency} jobs one by one, 3 lines each 0.3 s apart:")
        print(f"  output latency, remote entry -> 'flux job attach LOCALID': {spread(output)}")
        print(f"  mirror lag, remote alloc -> local alloc: {spread(alloc)}")
        print(f"  mirror lag, remote finish -> local finish: {spread(finish)}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
