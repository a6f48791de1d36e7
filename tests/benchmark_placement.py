"""Placement benchmark: how long jobs wait under each policy, against one
scheduler that holds all the clusters (the union).

A seeded job trace (arrivals, 1-32 cores, run times, time limits 1.2-3x
the run time) is replayed through a source instance with the plugin, once
per policy, to three targets of made-up resources (one rank each of 8,
16 and 40 cores; Fluxion with queue policies fcfs, easy and
conservative), and once straight into a union instance of 64 cores on
three ranks (8, 16, 40; Fluxion, --union-policy).  Jobs run as '-N1 -n K
-t LIMIT -S system.exec.test.run_duration=D true': flux's test execution,
no real cores.

Per policy: mean and p90 wait (the remote start minus the local submit;
for a job kept home, its start here), makespan, jobs that ended ok, remote
jobs counted (no job may run twice), the error of the estimate
(earliest_start: estimated minus actual start), the source job-manager's
CPU per job, and the waits as ratios to the union's.  The last lines,
one per policy, are machine-readable:

  placement: policy=NAME mean_wait_ratio=X p90_wait_ratio=Y ok=N/N

Run it as 'make benchmark-placement PLACEMENT_ARGS="..."'; the full size
is --jobs 120 --load 0.9; 'make check' runs a smoke of it
(test_benchmark_placement.py).
"""

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import flux
import flux.job
import flux.kvs
from flux.job import JobID, JobspecV1

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import broker_cpu  # noqa: E402
from flux_instance import FLUX, FluxInstance  # noqa: E402

#: The targets: (label, cores, Fluxion queue policy).
TARGETS = (("a", 8, "fcfs"), ("b", 16, "easy"), ("c", 40, "conservative"))

#: Cores of the source itself (include-local runs use them).
SOURCE_CORES = 8

POLICIES = ("random", "least_pending", "shortest_match", "earliest_start")

#: No run may take longer than this (seconds) past its last arrival.
DRAIN_TIMEOUT = 900


# -- the trace ----------------------------------------------------------------


def make_trace(seed, jobs, load, total_cores, min_dur=2.0, max_dur=12.0):
    """Jobs [{idx, at, cores, dur, limit}]: cores 2^U(0,5) rounded (1-32,
    more small than large), run time U(min_dur, max_dur), limit 1.2-3x
    the run time (and a second more at least), Poisson arrivals at the rate that offers 'load' of the
    total cores."""
    rng = random.Random(seed)
    trace, mean_work = [], 0.0
    for idx in range(jobs):
        cores = max(1, min(32, round(2 ** rng.uniform(0, 5))))
        dur = round(rng.uniform(min_dur, max_dur), 2)
        # Whole seconds, and one more than the run time at least: Fluxion
        # counts time in whole seconds, so an allocation can expire up to
        # a second before its limit is up.
        limit = max(math.ceil(dur * rng.uniform(1.2, 3.0)), math.ceil(dur) + 1)
        trace.append({"idx": idx, "cores": cores, "dur": dur, "limit": limit})
        mean_work += cores * dur / jobs
    rate = load * total_cores / mean_work  # jobs per second
    at = 0.0
    for job in trace:
        job["at"] = round(at, 3)
        at += rng.expovariate(rate)
    return trace


def read_trace(path):
    """A trace file: JSON lines with idx, at, cores, dur, limit."""
    trace = []
    with open(path) as fp:
        for number, line in enumerate(fp, 1):
            if not line.strip():
                continue
            job = json.loads(line)
            missing = {"idx", "at", "cores", "dur", "limit"} - set(job)
            if missing:
                raise SystemExit(f"{path}:{number}: missing {sorted(missing)}")
            trace.append(job)
    return sorted(trace, key=lambda j: j["at"])


# -- instances ----------------------------------------------------------------


def write_R(path, ranks):
    """R of made-up cores: ranks [(rank, cores)], hosts fake<rank>."""
    R = {
        "version": 1,
        "execution": {
            "R_lite": [{"rank": str(r), "children": {"core": f"0-{c - 1}"}} for r, c in ranks],
            "starttime": 0.0,
            "expiration": 0.0,
            "nodelist": [f"fake{r}" for r, _ in ranks],
        },
    }
    with open(path, "w") as fp:
        json.dump(R, fp)


def instance(workdir, name, ranks, queue_policy):
    R = os.path.join(workdir, f"{name}.R")
    write_R(R, ranks)
    config = (
        f'[resource]\npath = "{R}"\nnoverify = true\n'
        f'[sched-fluxion-qmanager]\nqueue-policy = "{queue_policy}"\n'
    )
    return FluxInstance(size=len(ranks), config=config, name=f"place-{name}").start()


def job_manager_cpu(inst):
    pid = int(inst.run("getattr", "broker.pid").stdout)
    return broker_cpu(pid).get("job-manager", 0.0)


def jobspec(job, time_scale, policy=None):
    spec = JobspecV1.from_command(["true"], num_tasks=job["cores"], cores_per_task=1, num_nodes=1)
    spec.duration = job["limit"] * time_scale
    spec.cwd = "/"
    spec.environment = {}
    spec.setattr("system.exec.test.run_duration", f"{job['dur'] * time_scale}s")
    if policy is not None:
        spec.setattr("system.dependencies", [{"scheme": "delegate", "value": policy}])
    return spec.dumps()


# -- one run ------------------------------------------------------------------


def replay(handle, trace, time_scale, policy=None):
    """Submit the trace in real time; the local job ids, in trace order."""
    ids = []
    start = time.time()
    for job in trace:
        delay = start + job["at"] * time_scale - time.time()
        if delay > 0:
            time.sleep(delay)
        ids.append(flux.job.submit(handle, jobspec(job, time_scale, policy)))
    return ids


def listing(inst):
    """{id: job} of every job of an instance (flux jobs -a --json)."""
    out = inst.run("jobs", "-a", "--json", "-c", "1000000", timeout=120).stdout
    return {job["id"]: job for job in json.loads(out)["jobs"]} if out.strip() else {}


def wait_all(inst, ids, timeout):
    deadline = time.time() + timeout
    wanted = set(ids)
    while time.time() < deadline:
        jobs = listing(inst)
        if all(jobs.get(i, {}).get("state") == "INACTIVE" for i in wanted):
            return jobs
        time.sleep(1.0)
    raise SystemExit(f"{inst.name}: jobs still active after {timeout}s")


def eventlog(handle, jobid):
    text = flux.kvs.get(handle, f"{JobID(jobid).kvs}.eventlog")
    if isinstance(text, (bytes, bytearray)):
        text = text.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p
    low, high = math.floor(k), math.ceil(k)
    return values[low] + (values[high] - values[low]) * (k - low)


def summarize(name, waits, starts_ends, ok, total, extra):
    submit0 = min(s for s, _ in starts_ends)
    makespan = max(e for _, e in starts_ends) - submit0
    result = {
        "policy": name,
        "mean_wait": statistics.mean(waits),
        "p90_wait": percentile(waits, 0.9),
        "makespan": makespan,
        "ok": ok,
        "jobs": total,
    }
    result.update(extra)
    return result


def run_union(union, trace, time_scale):
    handle = flux.Flux(union.uri)
    ids = replay(handle, trace, time_scale)
    jobs = wait_all(union, ids, DRAIN_TIMEOUT)
    waits, spans, ok = [], [], 0
    for i in ids:
        job = jobs[i]
        waits.append(job["t_run"] - job["t_submit"])
        spans.append((job["t_submit"], job.get("t_inactive", job["t_run"])))
        ok += bool(job.get("success"))
    return summarize("union", waits, spans, ok, len(ids), {})


def configure(source, targets, policy, include_local, move=None):
    """The source's registry and [delegate-policy]; move: (margin,
    interval) seconds for moving pending jobs, else never moved."""
    toml = source.resources
    for label, inst in targets.items():
        toml += f'\n[[delegate]]\nlabel = "{label}"\nuri = "{inst.uri}"\n'
    toml += f'\n[delegate-policy]\ndefault = "least_pending"\ninclude-local = {str(include_local).lower()}\n'
    margin, interval = move or (0, 30)
    toml += f"move-margin = {margin}\nmove-interval = {interval}\n"
    source.run("config", "load", input=toml)


def run_policy(source, targets, trace, time_scale, policy, include_local=False, move=None):
    configure(source, targets, policy, include_local, move)
    handle = flux.Flux(source.uri)
    before_cpu = job_manager_cpu(source)
    t0 = time.time()
    ids = replay(handle, trace, time_scale, policy)
    local = wait_all(source, ids, DRAIN_TIMEOUT)
    cpu_ms = (job_manager_cpu(source) - before_cpu) * 1000 / len(ids)
    remote = {label: listing(inst) for label, inst in targets.items()}
    by_uri = {inst.uri: label for label, inst in targets.items()}
    waits, spans, errors, ok = [], [], [], 0
    placed = {label: 0 for label in targets}
    placed["local"] = 0
    referenced = set()
    failed, moves = [], 0
    for i in ids:
        job = local[i]
        ok += bool(job.get("success"))
        events = eventlog(handle, i)
        moves += sum(1 for e in events if e["name"] == "delegate-move")
        if not job.get("success"):
            notes = [e["context"].get("note") for e in events if e["name"] == "exception"]
            failure = {"id": i, "result": job.get("result"), "notes": notes, "events": events}
            sent = [e["context"] for e in events if e["name"] == "delegated"]
            if sent:
                where = targets[sent[-1].get("label") or by_uri[sent[-1]["uri"]]]
                failure["remote_events"] = eventlog(flux.Flux(where.uri), sent[-1]["jobid"])
            failed.append(failure)
        delegated = [e for e in events if e["name"] == "delegated"]
        choices = [e for e in events if e["name"] == "delegate-choice"]
        if delegated:
            ctx = delegated[-1]["context"]
            label = ctx.get("label") or by_uri.get(ctx["uri"])
            rjob = remote[label].get(ctx["jobid"])
            if rjob is None or not rjob.get("t_run"):
                continue  # never ran there (an exception)
            referenced.add((label, ctx["jobid"]))
            placed[label] += 1
            start, end = rjob["t_run"], rjob.get("t_inactive", rjob["t_run"])
        elif job.get("t_run"):
            placed["local"] += 1
            start, end = job["t_run"], job.get("t_inactive", job["t_run"])
        else:
            continue
        waits.append(start - job["t_submit"])
        spans.append((job["t_submit"], end))
        if choices:
            chosen = choices[-1]["context"]
            for c in chosen["candidates"]:
                name = c.get("label") or c["uri"]
                if name == chosen.get("choice") and c.get("estimate") is not None:
                    errors.append(c["estimate"] - (start - choices[-1]["timestamp"]))
    # Remote jobs made during this run that ran: each must be one local
    # job's (a job moved leaves one behind that never ran).
    made = [j for jobs in remote.values() for j in jobs.values() if j["t_submit"] >= t0 - 1]
    extra = {
        "remote_jobs": sum(1 for j in made if j.get("t_run")),
        "remote_jobs_made": len(made),
        "moves": moves,
        "failed": failed,
        "referenced": len(referenced),
        "placed": placed,
        "cpu_ms_per_job": cpu_ms,
    }
    if errors:
        extra["estimate_error_p50"] = statistics.median(errors)
        extra["estimate_error_p90"] = percentile(errors, 0.9)
        extra["estimate_error_abs_p90"] = percentile([abs(e) for e in errors], 0.9)
    name = policy + ("+local" if include_local else "") + ("+move" if move else "")
    return summarize(name, waits, spans, ok, len(ids), extra)


# -- the cost of choosing -----------------------------------------------------


def cost_of_choosing(workdir, ntargets, njobs, policies, rounds=3):
    """The source job-manager's CPU per job (ms) under each policy, with
    ntargets targets of 8 made-up cores each (sched-simple: the cost
    measured is the source's), over bursts of njobs short jobs: the median
    of 'rounds' interleaved rounds."""
    started = []
    try:
        targets = {}
        for i in range(ntargets):
            R = os.path.join(workdir, f"cost{i}.R")
            write_R(R, [(0, 8)])
            inst = FluxInstance(
                config=f'[resource]\npath = "{R}"\nnoverify = true\n', name=f"cost-{i}"
            ).start()
            inst.remove_scheduler()
            inst.run("module", "load", "sched-simple")
            targets[f"t{i}"] = inst
            started.append(inst)
        source = FluxInstance(name="cost-source").start()
        started.append(source)
        source.resources = ""
        source.load_plugin()
        handle = flux.Flux(source.uri)
        job = {"cores": 1, "dur": 0.01, "limit": 60}
        readings = {p: [] for p in policies}
        for _ in range(rounds):
            for policy in policies:
                configure(source, targets, policy, False)
                time.sleep(2.5)  # the plans of the round before are stale
                before = job_manager_cpu(source)
                spec = jobspec(job, 1.0, policy)
                ids = [flux.job.submit_async(handle, spec) for _ in range(njobs)]
                ids = [f.get_id() for f in ids]
                wait_all(source, ids, DRAIN_TIMEOUT)
                readings[policy].append((job_manager_cpu(source) - before) * 1000 / njobs)
        return {p: statistics.median(v) for p, v in readings.items()}
    finally:
        for inst in reversed(started):
            inst.cleanup()


# -- report -------------------------------------------------------------------


def report(results, union):
    print()
    print(
        f"{'policy':<22} {'mean wait':>10} {'p90 wait':>10} {'makespan':>9} {'ok':>8}"
        f" {'mean/u':>7} {'p90/u':>7} {'remote':>7} {'cpu ms':>7}  placed / estimate error"
    )
    rows = [union] + results
    for r in rows:
        mean_ratio = r["mean_wait"] / union["mean_wait"] if union["mean_wait"] > 0 else float("inf")
        p90_ratio = r["p90_wait"] / union["p90_wait"] if union["p90_wait"] > 0 else float("inf")
        r["mean_wait_ratio"], r["p90_wait_ratio"] = mean_ratio, p90_ratio
        note = ""
        if "placed" in r:
            note = " ".join(f"{k}={v}" for k, v in r["placed"].items() if v)
        if r.get("moves"):
            note += f" moved={r['moves']}"
        if "estimate_error_p50" in r:
            note += (
                f"; error p50 {r['estimate_error_p50']:+.1f}s"
                f" p90 {r['estimate_error_p90']:+.1f}s"
            )
        print(
            f"{r['policy']:<22} {r['mean_wait']:>9.2f}s {r['p90_wait']:>9.2f}s"
            f" {r['makespan']:>8.1f}s {r['ok']:>4}/{r['jobs']:<3}"
            f" {mean_ratio:>7.2f} {p90_ratio:>7.2f}"
            f" {r.get('remote_jobs', '-'):>7} {r.get('cpu_ms_per_job', float('nan')):>7.1f}  {note}"
        )
    print()
    for r in results:
        for f in r.get("failed", ()):
            print(f"{r['policy']}: job {f['id']} ended {f['result']}: {f['notes']}")
    for r in results:
        print(
            f"placement: policy={r['policy']} mean_wait_ratio={r['mean_wait_ratio']:.3f}"
            f" p90_wait_ratio={r['p90_wait_ratio']:.3f} ok={r['ok']}/{r['jobs']}"
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="comma-separated; NAME+local runs NAME with include-local (the source"
        f" has {SOURCE_CORES} cores of its own), NAME+move with pending jobs moved"
        " (--move-margin, --move-interval), NAME+local+move both",
    )
    parser.add_argument(
        "--move-margin", type=float, default=5.0, help="move-margin of +move, in trace seconds"
    )
    parser.add_argument(
        "--move-interval", type=float, default=1.0, help="move-interval of +move (seconds)"
    )
    parser.add_argument("--trace", help="a trace file (JSON lines: idx, at, cores, dur, limit)")
    parser.add_argument("--write-trace", help="write the trace used to this file")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply every time of the trace"
    )
    parser.add_argument("--union-policy", default="easy", help="the union's queue policy")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--cost",
        metavar="N,N",
        help="instead: the source job-manager's CPU per job under least_pending and"
        " earliest_start with each number of targets (e.g. 3,16)",
    )
    parser.add_argument("--cost-jobs", type=int, default=100, help="jobs per burst (--cost)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cost:
        return cost_main(args)
    total = sum(c for _, c, _ in TARGETS)
    trace = read_trace(args.trace) if args.trace else make_trace(args.seed, args.jobs, args.load, total)
    if args.write_trace:
        with open(args.write_trace, "w") as fp:
            fp.writelines(json.dumps(job) + "\n" for job in trace)
    policies = [p for p in args.policies.split(",") if p]
    print(
        f"placement benchmark: {len(trace)} jobs over {trace[-1]['at'] * args.time_scale:.0f}s,"
        f" seed {args.seed}, load {args.load}, targets "
        + ", ".join(f"{label} {cores} cores {qp}" for label, cores, qp in TARGETS)
        + f"; union {total} cores on {len(TARGETS)} ranks ({args.union_policy})",
        flush=True,
    )
    workdir = tempfile.mkdtemp(prefix="placement-")
    started = []
    try:
        targets = {}
        for label, cores, qp in TARGETS:
            targets[label] = instance(workdir, label, [(0, cores)], qp)
            started.append(targets[label])
        source_R = os.path.join(workdir, "source.R")
        write_R(source_R, [(0, SOURCE_CORES)])
        source = FluxInstance(
            config=f'[resource]\npath = "{source_R}"\nnoverify = true\n', name="place-source"
        ).start()
        started.append(source)
        source.resources = f'[resource]\npath = "{source_R}"\nnoverify = true\n'
        source.load_plugin()
        union = instance(
            workdir, "union", [(i, c) for i, (_, c, _) in enumerate(TARGETS)], args.union_policy
        )
        started.append(union)
        union.wait_running()
        t = time.time()
        union_result = run_union(union, trace, args.time_scale)
        print(f"  union: mean wait {union_result['mean_wait']:.2f}s ({time.time() - t:.0f}s)", flush=True)
        results = []
        for name in policies:
            policy, *variants = name.split("+")
            move = None
            if "move" in variants:
                move = (args.move_margin * args.time_scale, args.move_interval)
            t = time.time()
            result = run_policy(
                source, targets, trace, args.time_scale, policy, "local" in variants, move
            )
            print(f"  {name}: mean wait {result['mean_wait']:.2f}s ({time.time() - t:.0f}s)", flush=True)
            results.append(result)
        report(results, union_result)
        if args.json:
            with open(args.json, "w") as fp:
                json.dump({"union": union_result, "policies": results, "args": vars(args)}, fp, indent=1)
        bad = [
            r
            for r in results
            if r["ok"] != r["jobs"]
            or r["remote_jobs"] != r["referenced"]
            or r["remote_jobs_made"] != r["referenced"] + r["moves"]
        ]
        return 1 if bad or union_result["ok"] != union_result["jobs"] else 0
    finally:
        for inst in reversed(started):
            inst.cleanup()


def cost_main(args):
    workdir = tempfile.mkdtemp(prefix="placement-cost-")
    policies = ("least_pending", "earliest_start")
    for n in (int(x) for x in args.cost.split(",")):
        per_job = cost_of_choosing(workdir, n, args.cost_jobs, policies)
        ratio = per_job["earliest_start"] / per_job["least_pending"]
        print(
            f"cost: targets={n} jobs={args.cost_jobs}"
            + "".join(f" {p}_ms={v:.2f}" for p, v in per_job.items())
            + f" ratio={ratio:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
