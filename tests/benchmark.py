"""Measure flux-delegate on real instances on this machine ('make benchmark').

The target is a 1-core sub-instance ('flux batch -n1') of a target-side
'flux start'; the source is another 'flux start' with delegate.so loaded.
Every timestamp is read from the instances' eventlogs (the job-manager's
journal, or job-info afterwards): all on this host's clock.

  throughput   N 'true' jobs submitted straight to the target vs the same
               N delegated through the source, each from the first submit
               call to the last job's 'clean' in the instance submitted to;
               R rounds in rotating order, inactive jobs purged between
               runs; medians and the ratio delegated/direct.
  handoff      K sequential delegated jobs: local 'submit' -> remote
               'submit' (p50/p95), beside the target's own ingest time for
               a direct submit (client call -> target 'submit'), the two
               interleaved; mirror lag (remote 'finish' -> local 'clean');
               one handoff broken down event by event.
  burst        B jobs at once, direct vs delegated: wall time, every
               status, exactly B remote jobs, the plugin's state after
               (flux jobtap query delegate.so), the source broker's RSS
               growth beside that of B plain local jobs; meanwhile a plain
               local job every half second (call -> start) and the
               job-manager's ping, beside flux's own floor (B held plain
               jobs submitted at once, no delegation).
  overhead     N plain jobs in an instance with the plugin loaded vs one
               without, R rounds in rotating order.

The throughput and overhead runs also take each broker's CPU time (its
threads' user + system time, /proc) per job: what a delegated job costs
the source, thread by thread (the plugin runs in the job-manager's), and
the target, beside what a plain job costs its instance.

Timings belong here, never in pass/fail tests.  Usage: see --help
(DELEGATE_PLUGIN, DELEGATE_HANDLER, DELEGATE_PYTHONPATH as for the tests).
"""

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import flux
import flux.constants
import flux.job
from flux.job import JobID

from flux_instance import FLUX, HANDLER, PLUGIN, FluxClient, FluxInstance

SECTIONS = ("throughput", "handoff", "burst", "overhead")

#: A plain job is started this often during a burst (the probe).
PROBE_INTERVAL = 0.5

#: No run may take longer than this (seconds): a hung job must not hang the
#: benchmark.
RUN_TIMEOUT = 1800


# -- numbers ------------------------------------------------------------------


def broker_cpu(pid):
    """{thread name: user + system CPU seconds} of process pid, threads of
    one name summed."""
    tick = os.sysconf("SC_CLK_TCK")
    times = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fp:
                name = fp.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as fp:
                fields = fp.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        times[name] += (int(fields[11]) + int(fields[12])) / tick
    return times


def cpu_per_job(before, after, n):
    """{thread: ms of CPU per job} between two broker_cpu() readings, and
    the total under "all"."""
    per = {name: (after[name] - before.get(name, 0.0)) * 1000 / n for name in after}
    per = {name: v for name, v in per.items() if v > 0}
    per["all"] = sum(per.values())
    return per


def median_cpu(readings):
    """The median, thread by thread, of cpu_per_job() readings."""
    names = set().union(*readings) if readings else set()
    return {name: statistics.median(r.get(name, 0.0) for r in readings) for name in names}


def cpu_text(per, top=6):
    """'all X ms: thread a, thread b, ...' (the largest first)."""
    threads = sorted(((v, k) for k, v in per.items() if k != "all"), reverse=True)[:top]
    return f"{per.get('all', 0):.1f} ms/job: " + ", ".join(f"{k} {v:.1f}" for v, k in threads)


def percentile(values, p):
    """The p-th percentile of values, linearly interpolated."""
    values = sorted(values)
    if not values:
        return math.nan
    k = (len(values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def spread(values, scale=1000.0, unit="ms"):
    """'p50 .. p95 .. max (n)' of values (seconds, shown in ms)."""
    if not values:
        return "(no samples)"
    v = [x * scale for x in values]
    return (
        f"p50 {percentile(v, 50):7.1f} {unit}  p95 {percentile(v, 95):7.1f} {unit}"
        f"  max {max(v):7.1f} {unit}  (n={len(v)})"
    )


def say(text=""):
    print(text, flush=True)


# -- instances ------------------------------------------------------------------


class Side:
    """An instance jobs are submitted to: its CLI (FluxClient) and an API
    handle of the benchmark's own."""

    def __init__(self, client, name):
        self.client = client
        self.name = name
        self.uri = client.uri
        self.handle = flux.Flux(client.uri)

    def broker_pid(self):
        if getattr(self, "_pid", None) is None:
            self._pid = int(self.client.run("getattr", "broker.pid").stdout)
        return self._pid

    def cpu(self):
        """{thread name: CPU seconds so far} of the broker (its modules run
        in threads of their own, named after them)."""
        return broker_cpu(self.broker_pid())

    def rss_mib(self):
        with open(f"/proc/{self.broker_pid()}/status") as fp:
            kib = next(int(line.split()[1]) for line in fp if line.startswith("VmRSS:"))
        return kib / 1024

    def purge(self):
        """Purge every inactive job (the job-manager keeps them otherwise)."""
        self.client.run("job", "purge", "--force", "--num-limit=0", timeout=300)

    def job_ids(self):
        """{id: state} of every job job-list knows (active and inactive)."""
        out = self.client.run(
            "jobs", "-a", "-n", "--count=0", "--format={id.dec} {state}", timeout=120
        )
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def settled_job_ids(self, expected=None, timeout=30):
        """job_ids() once job-list has caught up: every job inactive and two
        reads alike (and as many as expected, if it comes to that)."""
        deadline = time.time() + timeout
        last = None
        while True:
            ids = self.job_ids()
            done = ids == last and all(s == "INACTIVE" for s in ids.values())
            if done and (expected is None or len(ids) >= expected):
                return ids
            if time.time() > deadline:
                return ids
            last = ids
            time.sleep(0.3)

    def eventlogs(self, ids):
        """{id: Events} of ids, looked up all at once (after a run, never in
        its timed window)."""
        lookup = {"keys": ["eventlog"], "flags": 0}
        futures = [(i, self.handle.rpc("job-info.lookup", dict(lookup, id=int(i)))) for i in ids]
        result = {}
        for i, future in futures:
            text = future.get()["eventlog"]
            result[int(i)] = Events(json.loads(line) for line in text.splitlines() if line.strip())
        return result

    def query(self):
        return json.loads(self.client.run("jobtap", "query", "delegate.so").stdout)


class Events:
    """A job's events, by name (the first of each) and in order."""

    def __init__(self, events=()):
        self.all = []
        self.first = {}
        for event in events:
            self.add(event)

    def add(self, event):
        self.all.append(event)
        self.first.setdefault(event["name"], event)

    def t(self, name):
        return self.first[name]["timestamp"]

    def has(self, name):
        return name in self.first

    def count(self, name):
        return sum(1 for e in self.all if e["name"] == name)

    def outcome(self):
        """0, an exit status, or what went wrong (for 'every status right')."""
        for e in self.all:
            if e["name"] == "exception" and e["context"].get("severity") == 0:
                return f"exception {e['context'].get('type')}: {e['context'].get('note', '')}"
        if "finish" not in self.first:
            return "no finish event"
        return self.first["finish"]["context"].get("status")


def make_target(dir_name="bench-target-host"):
    """A 1-core sub-instance (flux batch -n1) of a 'flux start' of its own:
    (host instance, target Side)."""
    host = FluxInstance(name=dir_name).start()
    jobid = host.run(
        "batch", "-n1", f"--output={host.dir}/batch.out", "--wrap", "sleep", "inf"
    ).stdout.strip()
    host.wait_memo(jobid, "uri", timeout=120)
    uri = host.run("uri", "--local", jobid).stdout.strip()
    target = FluxClient(uri)
    target.wait_running()
    return host, Side(target, "target")


def make_source(name, plugin=True):
    instance = FluxInstance(name=name).start()
    if plugin:
        instance.load_plugin()
    return instance, Side(instance, name)


def jobspec(side, *options):
    """What 'flux submit OPTIONS true' would submit (its environment,
    cwd, rlimits), as a string: built once, outside any timed window."""
    return side.client.run("submit", "--dry-run", *options, "true").stdout


def cores(side):
    out = side.client.run("resource", "list", "-n", "-s", "all", "--format={ncores}").stdout
    return out.strip()


# -- submitting and waiting -----------------------------------------------------


class Journal:
    """Every event the job-manager of an instance records from now on, by
    job: the job-manager's journal (job-manager.events-journal), one
    stream, the cheapest way to see jobs end with their timestamps."""

    def __init__(self, side):
        self.handle = side.handle
        self.jobs = collections.defaultdict(Events)
        self.cleaned = set()
        self.ended = False
        self.on_clean = None  # called with the id of each job cleaned
        self.future = self.handle.rpc(
            "job-manager.events-journal", {"full": False}, flags=flux.constants.FLUX_RPC_STREAMING
        )
        self.future.then(self._response)
        # Requests from one client reach the job-manager in order: once the
        # ping is answered, the journal request has been taken in, and
        # every event after it will be sent.
        self.handle.rpc("job-manager.ping", {"seq": 0, "pad": ""}).get()

    def _response(self, future):
        try:
            message = future.get()
        except OSError:
            self.ended = True
            self.handle.reactor_stop()
            return
        future.reset()
        jobid = message["id"]
        events = self.jobs[jobid]
        for event in message["events"]:
            events.add(event)
            if event["name"] == "clean":
                self.cleaned.add(jobid)
                if self.on_clean:
                    self.on_clean(jobid)

    def stop(self):
        self.on_clean = None
        self.handle.rpc(
            "job-manager.events-journal-cancel",
            {"matchtag": self.future.pimpl.get_matchtag()},
            flags=flux.constants.FLUX_RPC_NORESPONSE,
        )
        timer = self.handle.timer_watcher_create(10, lambda *a: self.handle.reactor_stop())
        timer.start()
        while not self.ended:
            self.handle.reactor_run()
            if not self.ended:
                break  # no end of stream in 10 s: leave it
        timer.stop()


class Run:
    """count jobs submitted at once to side, until each one's 'clean' (or,
    with submitted_only, until each one's submit is answered).

    t0: time.time() just before the first submit call; ids, in submit
    order; jobs: {id: Events} from the journal of side; end: the last
    'clean' timestamp (or the client's time when the last submit was
    answered); wall = end - t0."""

    def __init__(self, side, spec, count=1, urgency=16, submitted_only=False):
        self.side = side
        journal = Journal(side)
        handle = side.handle
        self.ids = [None] * count
        answered = [0]
        running = set()  # ids answered and not yet cleaned

        def done():
            return answered[0] == count and (submitted_only or not running)

        def on_id(future, index):
            jobid = int(future.get_id())
            self.ids[index] = jobid
            answered[0] += 1
            if jobid not in journal.cleaned:
                running.add(jobid)
            if answered[0] == count:
                self.t_submitted = time.time()
            if done():
                handle.reactor_stop()

        def on_clean(jobid):
            running.discard(jobid)
            if done():
                handle.reactor_stop()

        journal.on_clean = on_clean
        timed_out = []

        def on_timeout(*_):
            timed_out.append(True)
            handle.reactor_stop()

        timer = handle.timer_watcher_create(RUN_TIMEOUT, on_timeout)
        futures = []
        self.t0 = time.time()
        for index in range(count):
            future = flux.job.submit_async(handle, spec, urgency=urgency)
            future.then(on_id, index)
            futures.append(future)
        timer.start()
        while not done() and not timed_out:
            if journal.ended:
                raise RuntimeError(f"{side.name}: the job-manager's journal ended")
            handle.reactor_run()
        timer.stop()
        journal.stop()
        if timed_out:
            raise RuntimeError(f"{side.name}: {count} jobs not done within {RUN_TIMEOUT}s")
        self.jobs = {i: journal.jobs[i] for i in self.ids}
        if submitted_only:
            self.end = self.t_submitted
        else:
            self.end = max(self.jobs[i].t("clean") for i in self.ids)
        self.wall = self.end - self.t0


def check_direct(run):
    """What went wrong with a run of jobs submitted straight to an instance."""
    problems = []
    bad = {i: e.outcome() for i, e in run.jobs.items() if e.outcome() != 0}
    if bad:
        problems.append(f"{len(bad)} jobs did not exit 0: {first_items(bad)}")
    listed = run.side.settled_job_ids(expected=len(run.ids))
    if set(int(i) for i in listed) != set(run.ids):
        problems.append(f"{len(listed)} jobs in {run.side.name}, {len(run.ids)} submitted")
    return problems


def check_delegated(run, target):
    """What went wrong with a run of delegated jobs: every local job exited
    0, was delegated once, never failed over; exactly one remote job each
    (the target was purged before the run), each exited 0.  Returns
    (problems, {local id: remote Events})."""
    problems = []
    bad = {i: e.outcome() for i, e in run.jobs.items() if e.outcome() != 0}
    if bad:
        problems.append(f"{len(bad)} local jobs did not exit 0: {first_items(bad)}")
    remote_of = {}
    for i, events in run.jobs.items():
        if events.count("delegated") != 1 or events.has("delegate-failover"):
            problems.append(
                f"{JobID(i).f58}: delegated {events.count('delegated')} times,"
                f" {events.count('delegate-failover')} failovers"
            )
        if events.has("delegated"):
            remote_of[i] = int(events.first["delegated"]["context"]["jobid"])
    if len(set(remote_of.values())) != len(remote_of):
        problems.append("two local jobs name the same remote job")
    listed = set(int(i) for i in target.settled_job_ids(expected=len(run.ids)))
    if listed != set(remote_of.values()) or len(listed) != len(run.ids):
        problems.append(
            f"{len(listed)} jobs in the target for {len(run.ids)} delegated"
            f" ({len(listed - set(remote_of.values()))} unknown ones,"
            f" {len(set(remote_of.values()) - listed)} missing)"
        )
    remote_logs = target.eventlogs(sorted(set(remote_of.values()) & listed))
    remote = {i: remote_logs[r] for i, r in remote_of.items() if r in remote_logs}
    bad = {i: e.outcome() for i, e in remote.items() if e.outcome() != 0}
    if bad:
        problems.append(f"{len(bad)} remote jobs did not exit 0: {first_items(bad)}")
    return problems, remote


def first_items(mapping, n=3):
    return ", ".join(f"{JobID(k).f58}: {v}" for k, v in list(mapping.items())[:n])


def verdict(problems):
    return "every status right" if not problems else "WRONG: " + "; ".join(problems)


def pause(args):
    """Let the last run's aftermath (purge, validators) settle."""
    time.sleep(args.settle)


# -- the probe: a plain job now and then, and the job-manager's ping ------------


def probe_main(uri, stopfile, interval):
    """Run by a process of its own (--probe): every interval, the
    job-manager's ping round trip and the time a plain 'true' job takes
    from the submit call to its 'start' event; until stopfile exists.
    Prints the samples as JSON."""
    handle = flux.Flux(uri)
    spec = FluxClient(uri).run("submit", "--dry-run", "true").stdout
    samples = []
    while not os.path.exists(stopfile):
        tick = time.time()
        handle.rpc("job-manager.ping", {"seq": 0, "pad": ""}).get()
        ping = time.time() - tick
        call = time.time()
        jobid = flux.job.submit(handle, spec)
        start = flux.job.event_wait(handle, jobid, "start").timestamp
        samples.append({"ping": ping, "start": start - call, "t": call})
        if len(samples) == 1:
            print("ready", flush=True)
        time.sleep(max(0.0, interval - (time.time() - tick)))
    print(json.dumps(samples))


class Probe:
    """The probe on side, in a process of its own (its timings are not
    the benchmark's Python's), from now until stop()."""

    def __init__(self, side):
        fd, self.stopfile = tempfile.mkstemp(prefix="delegate-bench-probe-")
        os.close(fd)
        os.unlink(self.stopfile)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--probe",
                side.uri,
                "--probe-stop",
                self.stopfile,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        # Its first sample taken: it runs before what it watches starts.
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the probe on {side.name} did not start")

    def stop(self):
        """{"start": [...], "ping": [...], "t": [...]} (seconds; t: when
        each sample's submit was called, time.time())."""
        open(self.stopfile, "w").close()
        try:
            out, _ = self.proc.communicate(timeout=300)
        finally:
            os.unlink(self.stopfile)
        samples = json.loads(out) if out.strip() else []
        return {key: [s[key] for s in samples] for key in ("start", "ping", "t")}


def probed(label, samples):
    say(f"    {label:<36} start {spread(samples['start'])}")
    say(f"    {'':<36} ping  {spread(samples['ping'])}")


def split_samples(samples, until):
    """The samples taken before 'until' (time.time()), and those after."""
    before = {k: [] for k in samples}
    after = {k: [] for k in samples}
    for i, t in enumerate(samples["t"]):
        side = before if t < until else after
        for key in samples:
            side[key].append(samples[key][i])
    return before, after


# -- sections -------------------------------------------------------------------


class Setup:
    """The instances the sections share, started when first needed."""

    def __init__(self, args):
        self.args = args
        self.instances = []
        self._target = None
        self._source = None

    def target(self):
        if self._target is None:
            host, self._target = make_target()
            self.instances.append(host)
            say(
                f"target: 1-core sub-instance (flux batch) of a flux start,"
                f" {cores(self._target)} core(s): {self._target.uri}"
            )
            self.direct_spec = jobspec(self._target)
            warm = Run(self._target, self.direct_spec)
            say(f"  {'first direct job (warms the target up)':<44} {ms(warm.wall)} submit to clean")
        return self._target

    def source(self):
        if self._source is None:
            target = self.target()
            instance, self._source = make_source("bench-source")
            self.instances.append(instance)
            self.delegated_spec = jobspec(self._source, f"--dependency=delegate:{target.uri}")
            say(f"source: flux start with delegate.so, {cores(self._source)} core(s)")
            warm = Run(self._source, self.delegated_spec)
            say(
                f"  {'first delegated job (opens the connection)':<44} {ms(warm.wall)} submit to clean"
            )
            self._source.purge()
            target.purge()
        return self._source

    def fresh(self, name, plugin):
        instance, side = make_source(name, plugin)
        self.instances.append(instance)
        return instance, side

    def close(self, instance):
        instance.cleanup()
        self.instances.remove(instance)

    def cleanup(self):
        for instance in reversed(self.instances):
            instance.cleanup()


def throughput(setup, args, results):
    target, source = setup.target(), setup.source()
    n = args.jobs
    say(
        f"\n== throughput: {n} 'true' jobs, first submit call to the last 'clean'"
        f" in the instance submitted to; {args.rounds} rounds"
    )
    walls = {"direct": [], "delegated": []}
    cpu = {"direct": [], "delegated": [], "source": []}
    lags, handoffs = [], []
    problems = []
    kinds = ["direct", "delegated"]
    for r in range(args.rounds):
        order = kinds[r % 2 :] + kinds[: r % 2]
        for kind in order:
            source.purge()
            target.purge()
            pause(args)
            target_before, source_before = target.cpu(), source.cpu()
            if kind == "direct":
                run = Run(target, setup.direct_spec, n)
                cpu["direct"].append(cpu_per_job(target_before, target.cpu(), n))
                found = check_direct(run)
            else:
                run = Run(source, setup.delegated_spec, n)
                cpu["delegated"].append(cpu_per_job(target_before, target.cpu(), n))
                cpu["source"].append(cpu_per_job(source_before, source.cpu(), n))
                found, remote = check_delegated(run, target)
                for i, events in run.jobs.items():
                    if i in remote and remote[i].has("finish") and events.has("clean"):
                        lags.append(events.t("clean") - remote[i].t("finish"))
                        handoffs.append(remote[i].t("submit") - events.t("submit"))
            walls[kind].append(run.wall)
            problems += [f"round {r + 1} {kind}: {p}" for p in found]
            say(
                f"  round {r + 1} {kind:<9} {run.wall:7.2f} s  {n / run.wall:6.1f} jobs/s"
                f"   {verdict(found)}"
            )
    source.purge()
    target.purge()
    direct = statistics.median(walls["direct"])
    delegated = statistics.median(walls["delegated"])
    say(f"  median direct     {direct:7.2f} s  {n / direct:6.1f} jobs/s")
    say(f"  median delegated  {delegated:7.2f} s  {n / delegated:6.1f} jobs/s")
    say(f"  ratio delegated/direct {delegated / direct:.2f}")
    say(f"  under this load: handoff {spread(handoffs)}")
    say(f"                mirror lag {spread(lags)}")
    cpu = {kind: median_cpu(readings) for kind, readings in cpu.items()}
    say("  broker CPU per job (medians; user + system time of the broker's threads):")
    say(f"    source, delegated  {cpu_text(cpu['source'])}")
    say(f"    target, delegated  {cpu_text(cpu['delegated'])}")
    say(f"    target, direct     {cpu_text(cpu['direct'])}")
    results["throughput"] = dict(
        direct=direct,
        delegated=delegated,
        n=n,
        rounds=args.rounds,
        lag=lags,
        handoff=handoffs,
        problems=problems,
        cpu=cpu,
    )


def handoff(setup, args, results):
    target, source = setup.target(), setup.source()
    k = args.handoffs
    say(
        f"\n== handoff: {k} sequential delegated jobs, interleaved with {k} direct"
        " submits to the target"
    )
    source.purge()
    target.purge()
    pause(args)
    ingest, answered, delegated_runs = [], [], []
    for i in range(k):
        for kind in (("direct", "delegated") if i % 2 == 0 else ("delegated", "direct")):
            if kind == "direct":
                run = Run(target, setup.direct_spec)
                ingest.append(run.jobs[run.ids[0]].t("submit") - run.t0)
                answered.append(run.t_submitted - run.t0)
            else:
                delegated_runs.append(Run(source, setup.delegated_spec))
    jobs = {}
    source_ingest = []
    for run in delegated_runs:
        jobs.update(run.jobs)
        source_ingest.append(run.jobs[run.ids[0]].t("submit") - run.t0)
    remote_of = {
        i: int(e.first["delegated"]["context"]["jobid"])
        for i, e in jobs.items()
        if e.has("delegated")
    }
    remote_logs = target.eventlogs(remote_of.values())
    handoffs, to_id, lags = {}, [], []
    problems = []
    for i, events in jobs.items():
        if i not in remote_of:
            problems.append(f"{JobID(i).f58} not delegated: {events.outcome()}")
            continue
        remote = remote_logs[remote_of[i]]
        handoffs[i] = remote.t("submit") - events.t("submit")
        to_id.append(events.t("delegated") - events.t("submit"))
        lags.append(events.t("clean") - remote.t("finish"))
        if events.outcome() != 0 or remote.outcome() != 0:
            problems.append(f"{JobID(i).f58}: {events.outcome()} (remote {remote.outcome()})")
    say(f"  handoff (local submit -> remote submit)        {spread(handoffs.values())}")
    say(f"  target ingest (direct: call -> target submit)  {spread(ingest)}")
    say(f"  source ingest (call -> local submit)           {spread(source_ingest)}")
    say(f"  local submit -> 'delegated' (remote id known)  {spread(to_id)}")
    say(f"  direct: call -> job id answered                {spread(answered)}")
    say(f"  mirror lag (remote finish -> local clean)      {spread(lags)}")
    counts = source.query()["counts"]
    say(
        f"  plugin: from job.new {counts['early']} (or its turn in a burst"
        f" {counts['early-queued']}), from DEPEND {counts['at-depend']};"
        f" feasibility asked {counts['feasibility-asked']}, cached"
        f" {counts['feasibility-cached']}; ends through the journal {counts['ended-by-journal']};"
        f" outputs read from the guest namespace {counts['output-from-namespace']},"
        f" the job's directory {counts['output-from-job-directory']},"
        f" through job-info {counts['output-watched']}"
        " (since the source started)"
    )
    unbatched = handoffs_unbatched(setup, source, target, k)
    say(f"  handoff, the source's [ingest] batch-count = 1 {spread(unbatched)}")
    say(f"  {verdict(problems)}")
    if handoffs:
        median = percentile(handoffs.values(), 50)
        one = min(handoffs, key=lambda i: abs(handoffs[i] - median))
        breakdown(jobs[one], remote_logs[remote_of[one]], one)
    if lags:
        median = percentile(lags, 50)
        one = min(
            (i for i in jobs if i in remote_of),
            key=lambda i: abs(jobs[i].t("clean") - remote_logs[remote_of[i]].t("finish") - median),
        )
        lag_breakdown(jobs[one], remote_logs[remote_of[one]], one)
    failing(setup, args)
    source.purge()
    target.purge()
    results["handoff"] = dict(
        unbatched=unbatched,
        handoff=list(handoffs.values()),
        ingest=ingest,
        lag=lags,
        problems=problems,
        to_id=to_id,
        answered=answered,
    )


def handoffs_unbatched(setup, source, target, k):
    """Hand-offs (local submit -> remote submit) of k sequential jobs with
    the source's job-ingest committing each job at once ([ingest]
    batch-count = 1) instead of gathering jobs for 10 ms, as a site whose
    login instance mostly delegates may configure it; then as before."""
    config = source.client.run("config", "get").stdout
    unbatched = dict(json.loads(config), ingest={"batch-count": 1})
    source.client.run("config", "load", input=json.dumps(unbatched))
    source.client.run("module", "reload", "job-ingest")
    try:
        runs = [Run(source, setup.delegated_spec) for _ in range(k)]
    finally:
        source.client.run("config", "load", input=config)
        source.client.run("module", "reload", "job-ingest")
    jobs = {}
    for run in runs:
        jobs.update(run.jobs)
    remote_of = {
        i: int(e.first["delegated"]["context"]["jobid"]) for i, e in jobs.items() if e.has("delegated")
    }
    remote_logs = target.eventlogs(remote_of.values())
    return [remote_logs[r].t("submit") - jobs[i].t("submit") for i, r in remote_of.items()]


def breakdown(local, remote, jobid):
    """One handoff, event by event, from the local submit on."""
    say(f"  one handoff, event by event ({JobID(jobid).f58}, the one nearest the median):")
    t0 = local.t("submit")
    until = local.t("delegated")
    rows = [(e["timestamp"], "local ", e) for e in local.all if e["timestamp"] <= until]
    rows += [(e["timestamp"], "remote", e) for e in remote.all if e["timestamp"] <= until]
    previous = t0
    for t, where, event in sorted(rows, key=lambda row: row[0]):
        note = ""
        context = event.get("context", {})
        if event["name"] == "dependency-add":
            note = context.get("description", "")
        elif event["name"] == "delegate-choice":
            note = "pre-flight: " + ", ".join(
                c.get("verdict", "?") for c in context.get("candidates", [])
            )
        elif event["name"] == "delegated":
            note = f"remote id {JobID(context['jobid']).f58}"
        say(
            f"    {(t - t0) * 1000:+9.1f} ms  (+{(t - previous) * 1000:7.1f})  {where}"
            f"  {event['name']:<16} {note}"
        )
        previous = t
    say(
        "    (a 'submit' event is posted as the job-manager takes the job in, before"
        " 'validate'; the submit is answered, and 'delegated' posted, after it)"
    )


def lag_breakdown(local, remote, jobid):
    """One mirror lag, event by event, from the remote finish on."""
    say(f"  one mirror lag, event by event ({JobID(jobid).f58}, the one nearest the median):")
    t0 = remote.t("finish")
    rows = [(e["timestamp"], "local ", e) for e in local.all if e["timestamp"] >= t0]
    rows += [(e["timestamp"], "remote", e) for e in remote.all if e["timestamp"] >= t0]
    previous = t0
    for t, where, event in sorted(rows, key=lambda row: row[0]):
        say(
            f"    {(t - t0) * 1000:+9.1f} ms  (+{(t - previous) * 1000:7.1f})  {where}"
            f"  {event['name']}"
        )
        previous = t


def failing(setup, args):
    """A job no target can run: local submit -> its exception (the
    pre-flight says no, nothing is submitted)."""
    source = setup.source()
    spec = jobspec(source, f"--dependency=delegate:{setup.target().uri}", "-n", "1024")
    times = []
    for _ in range(min(args.handoffs, 5)):
        run = Run(source, spec)
        events = run.jobs[run.ids[0]]
        if events.has("exception"):
            times.append(events.t("exception") - events.t("submit"))
    say(f"  a job no target can run: submit -> exception {spread(times)}")


def burst(setup, args, results):
    target = setup.target()
    b = args.burst
    say(f"\n== burst: {b} jobs at once, direct vs delegated (a fresh source)")
    instance, source = setup.fresh("bench-burst-source", plugin=True)
    spec = jobspec(source, f"--dependency=delegate:{target.uri}")
    Run(source, spec)  # opens the connection
    source.purge()
    target.purge()
    pause(args)

    # The bursts measured: nothing else runs meanwhile (the probe's jobs
    # would add to the source's RSS).
    direct = Run(target, setup.direct_spec, b)
    direct_problems = check_direct(direct)
    say(
        f"  direct     {direct.wall:7.2f} s  {b / direct.wall:6.1f} jobs/s"
        f"   {verdict(direct_problems)}"
    )
    target.purge()
    pause(args)
    rss_before = source.rss_mib()
    query_before = source.query()
    delegated = Run(source, spec, b)
    delegated_problems, remote = check_delegated(delegated, target)
    say(
        f"  delegated  {delegated.wall:7.2f} s  {b / delegated.wall:6.1f} jobs/s"
        f"   {verdict(delegated_problems)}; {len(remote)} remote jobs"
    )
    say(f"  ratio delegated/direct {delegated.wall / direct.wall:.2f}")
    query = wait_for_plugin_idle(source)
    time.sleep(1)
    rss_after = source.rss_mib()
    leftovers = plugin_leftovers(query_before, query)
    say(
        f"  plugin after: jobs held {query['jobs'] or 0}, watchers {query_before['watchers']}"
        f" -> {query['watchers']}, connections {len(query['connections'])},"
        f" helper threads {query['helper-threads']}, admission {query['admission']}"
        f"   {'nothing per job left' if not leftovers else 'LEFT: ' + '; '.join(leftovers)}"
    )
    source.purge()
    target.purge()

    # Flux alone: b plain 'true' jobs in a fresh instance without the plugin.
    plain_instance, plain = setup.fresh("bench-burst-plain", plugin=False)
    plain_spec = jobspec(plain)
    Run(plain, plain_spec)
    plain.purge()
    plain_before = plain.rss_mib()
    plain_run = Run(plain, plain_spec, b)
    time.sleep(1)
    plain_after = plain.rss_mib()
    plain_problems = check_direct(plain_run)
    setup.close(plain_instance)
    say(
        f"  source broker RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
        f" (+{rss_after - rss_before:.1f}); {b} plain local jobs in a fresh instance"
        f" without the plugin: {plain_before:.0f} -> {plain_after:.0f} MiB"
        f" (+{plain_after - plain_before:.1f}) ({plain_run.wall:.2f} s, {verdict(plain_problems)})"
    )

    # Responsiveness: a plain local job every half second and the
    # job-manager's ping, idle, during another delegated burst, and during
    # flux's own floor: b held plain jobs submitted at once (urgency 0:
    # they take no resources), no delegation.
    pause(args)
    probe = Probe(source)
    time.sleep(args.idle)
    idle = probe.stop()
    probe = Probe(source)
    again = Run(source, spec, b)
    busy = probe.stop()
    again_problems, again_remote = check_delegated(again, target)
    source.purge()
    target.purge()
    pause(args)
    probe = Probe(source)
    held = Run(source, jobspec(source), b, urgency=0, submitted_only=True)
    time.sleep(2 * PROBE_INTERVAL)  # a sample or two as it ends
    floor = probe.stop()
    source.client.run("cancel", "--all", "--states=pending", check=False, timeout=300)
    say(
        f"  responsiveness of the source (a plain job every {PROBE_INTERVAL:g} s: submit call"
        " -> start; the job-manager's ping):"
    )
    probed("idle", idle)
    probed(f"delegated burst ({again.wall:.1f} s)", busy)
    # Taking the submits in is flux's own work (the floor below does no
    # more): the burst's samples before the last submit was answered, and
    # after.
    taking, after = split_samples(busy, again.t_submitted)
    probed(f"  while {b} submits were taken in ({again.t_submitted - again.t0:.1f} s)", taking)
    probed("  after, while delegated and followed", after)
    probed(f"floor: {b} held plain jobs ({held.wall:.1f} s)", floor)
    if again_problems:
        say(f"  the probed burst: {verdict(again_problems)}")
    setup.close(instance)
    results["burst"] = dict(
        b=b,
        direct=direct.wall,
        delegated=delegated.wall,
        remote=len(remote),
        problems=direct_problems + delegated_problems + plain_problems + again_problems,
        leftovers=leftovers,
        rss=rss_after - rss_before,
        plain_rss=plain_after - plain_before,
        busy=busy,
        busy_after=after,
        busy_taking=taking,
        floor=floor,
        idle=idle,
    )


def plugin_leftovers(before, after):
    """What the plugin holds after a burst that it did not before: no job,
    no watcher more, no admission, one connection."""
    leftovers = []
    if after["jobs"]:
        leftovers.append(f"jobs held {after['jobs']}")
    if after["watchers"] > before["watchers"]:
        leftovers.append(f"watchers {before['watchers']} -> {after['watchers']}")
    if after["admission"] != {"active": 0, "waiting": 0}:
        leftovers.append(f"admission {after['admission']}")
    if len(after["connections"]) != 1:
        leftovers.append(f"connections {after['connections']}")
    if after["helper-threads"]:
        leftovers.append(f"helper threads {after['helper-threads']}")
    return leftovers


def wait_for_plugin_idle(source, timeout=30):
    """The plugin's state once it holds no job (or after timeout)."""
    deadline = time.time() + timeout
    while True:
        query = source.query()
        if (not query["jobs"] and not query["admission"]["active"]) or time.time() > deadline:
            return query
        time.sleep(0.2)


def overhead(setup, args, results):
    n = args.jobs
    say(
        f"\n== plain-job overhead: {n} plain 'true' jobs, with and without the plugin"
        f" loaded (two fresh instances); {args.rounds} rounds"
    )
    without_instance, without = setup.fresh("bench-plain", plugin=False)
    with_instance, with_ = setup.fresh("bench-plain-plugin", plugin=True)
    sides = {"without": without, "with": with_}
    specs = {kind: jobspec(side) for kind, side in sides.items()}
    for kind, side in sides.items():
        Run(side, specs[kind])  # warm-up
    walls = {"without": [], "with": []}
    cpu = {"without": [], "with": []}
    problems = []
    kinds = ["without", "with"]
    for r in range(args.rounds):
        for kind in kinds[r % 2 :] + kinds[: r % 2]:
            side = sides[kind]
            side.purge()
            pause(args)
            before = side.cpu()
            run = Run(side, specs[kind], n)
            cpu[kind].append(cpu_per_job(before, side.cpu(), n))
            found = check_direct(run)
            problems += found
            walls[kind].append(run.wall)
            say(
                f"  round {r + 1} {kind:<7} plugin {run.wall:7.2f} s  {n / run.wall:6.1f} jobs/s"
                f"   {verdict(found)}"
            )
    setup.close(without_instance)
    setup.close(with_instance)
    a, b = statistics.median(walls["without"]), statistics.median(walls["with"])
    say(f"  median without {a:7.2f} s, with {b:7.2f} s: ratio with/without {b / a:.2f}")
    cpu = {kind: median_cpu(readings) for kind, readings in cpu.items()}
    say("  broker CPU per plain job (medians):")
    for kind in kinds:
        say(f"    {kind:<7} plugin   {cpu_text(cpu[kind])}")
    results["overhead"] = dict(without=a, with_=b, problems=problems, cpu=cpu)


# -- the summary ------------------------------------------------------------------


def p50_95(values, digits=1):
    """'p50 / p95 ms' of values (seconds)."""
    return (
        f"{percentile(values, 50) * 1000:.{digits}f} /"
        f" {percentile(values, 95) * 1000:.{digits}f} ms"
    )


def summary(args, results):
    """The table in the issue's shape, from what the sections measured."""
    rows = []
    right = "every status right"
    wrong = "WRONG (see above)"
    if "throughput" in results:
        t = results["throughput"]
        n = t["n"]
        for kind in ("direct", "delegated"):
            rows.append(
                (
                    f"throughput {kind}",
                    f"{t[kind]:.2f} s  ({n / t[kind]:.1f} jobs/s)",
                    f"median of {t['rounds']}, {n} jobs each"
                    + (f"; {right if not t['problems'] else wrong}" if kind == "delegated" else ""),
                )
            )
        rows.append(("throughput ratio", f"{t['delegated'] / t['direct']:.2f}", "delegated/direct"))
        c = t["cpu"]
        rows.append(
            (
                "source CPU / delegated job",
                f"{c['source'].get('all', 0):.1f} ms",
                f"job-manager thread (the plugin) {c['source'].get('job-manager', 0):.1f} ms;"
                f" target {c['delegated'].get('all', 0):.1f} ms (direct"
                f" {c['direct'].get('all', 0):.1f} ms)",
            )
        )
    if "handoff" in results:
        h = results["handoff"]
        rows.append(
            (
                "handoff p50 / p95",
                p50_95(h["handoff"]),
                f"target ingest p50 {percentile(h['ingest'], 50) * 1000:.1f} ms",
            )
        )
        rows.append(
            (
                "  source batch-count = 1",
                p50_95(h["unbatched"]),
                "the source's job-ingest commits each job at once",
            )
        )
        rows.append(
            (
                "to the remote id p50",
                f"{percentile(h['to_id'], 50) * 1000:.1f} ms",
                "local submit -> 'delegated'; direct call -> id"
                f" {percentile(h['answered'], 50) * 1000:.1f} ms",
            )
        )
        rows.append(
            ("mirror lag p50 / p95", p50_95(h["lag"]), f"one job at a time, {len(h['lag'])} jobs")
        )
    if "throughput" in results:
        rows.append(
            (
                "mirror lag, loaded",
                p50_95(results["throughput"]["lag"]),
                "in the delegated throughput runs",
            )
        )
    if "burst" in results:
        u = results["burst"]
        ok = not u["problems"] and not u["leftovers"] and u["remote"] == u["b"]
        rows.append(
            (
                f"burst {u['b']} direct / deleg.",
                f"{u['direct']:.1f} / {u['delegated']:.1f} s",
                f"{u['remote']} remote jobs, "
                + ("statuses right, nothing per job left" if ok else wrong),
            )
        )
        rows.append(
            (
                "burst RSS growth",
                f"+{u['rss']:.1f} MiB",
                f"{u['b']} plain local jobs: +{u['plain_rss']:.1f} MiB",
            )
        )
        rows.append(
            (
                "burst: plain job start",
                p50_95(u["busy"]["start"], 0),
                f"p50 / p95; floor (held burst) {p50_95(u['floor']['start'], 0)},"
                f" idle {p50_95(u['idle']['start'], 0)}",
            )
        )
        slowest = max(u["busy_after"]["start"], default=math.nan)
        rows.append(
            (
                "  after the submits",
                p50_95(u["busy_after"]["start"], 0),
                f"p50 / p95, max {slowest * 1000:.0f} ms; while taken in"
                f" {p50_95(u['busy_taking']['start'], 0)}",
            )
        )
        rows.append(
            (
                "burst: job-manager ping",
                p50_95(u["busy"]["ping"]),
                f"p50 / p95; floor {p50_95(u['floor']['ping'])},"
                f" idle {p50_95(u['idle']['ping'])}",
            )
        )
    if "overhead" in results:
        o = results["overhead"]
        rows.append(
            (
                "plain jobs with/without",
                f"{o['with_'] / o['without']:.2f}",
                f"{o['with_']:.2f} s / {o['without']:.2f} s, {args.jobs} jobs, medians",
            )
        )
        c = o["cpu"]
        rows.append(
            (
                "  CPU / plain job",
                f"{c['with'].get('all', 0):.1f} / {c['without'].get('all', 0):.1f} ms",
                f"with / without; job-manager thread {c['with'].get('job-manager', 0):.1f} /"
                f" {c['without'].get('job-manager', 0):.1f} ms",
            )
        )
    say("\n== summary")
    width = max((len(r[0]) for r in rows), default=0)
    vwidth = max((len(r[1]) for r in rows), default=0)
    for name, value, note in rows:
        say(f"  {name:<{width}}  {value:<{vwidth}}  {note}")


# -- main -------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Measure flux-delegate on real instances on this machine.",
        epilog="Never run the full size on a busy machine: the numbers would mean"
        " little, and the other users' runs would suffer.",
    )
    parser.add_argument("--jobs", type=int, help="N: jobs per throughput and overhead run (300)")
    parser.add_argument("--rounds", type=int, help="R: rounds of each run, in rotating order (3)")
    parser.add_argument("--handoffs", type=int, help="K: sequential delegated jobs (50)")
    parser.add_argument("--burst", type=int, help="B: jobs in the burst (1000)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: N=30, K=10, B=100 (unless given)"
    )
    parser.add_argument(
        "--only", choices=SECTIONS, action="append", help="run only this section (may be repeated)"
    )
    parser.add_argument("--probe", metavar="URI", help=argparse.SUPPRESS)
    parser.add_argument("--probe-stop", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = dict(jobs=30, rounds=3, handoffs=10, burst=100, settle=0.5, idle=2.0)
    full = dict(jobs=300, rounds=3, handoffs=50, burst=1000, settle=1.0, idle=5.0)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.rounds < 1 or args.jobs < 1 or args.handoffs < 1 or args.burst < 1:
        parser.error("--jobs, --rounds, --handoffs and --burst must be at least 1")
    return args


def main():
    args = parse_args()
    if args.probe:
        probe_main(args.probe, args.probe_stop, PROBE_INTERVAL)
        return 0
    if not PLUGIN or not os.path.exists(PLUGIN) or not HANDLER:
        say(
            "DELEGATE_PLUGIN and DELEGATE_HANDLER must name the built plugin and"
            " its handler ('make benchmark' sets them)"
        )
        return 2
    # As for the tests: no user registry file is read.
    config = tempfile.TemporaryDirectory(prefix="delegate-bench-config-")
    os.environ["XDG_CONFIG_HOME"] = config.name
    os.environ.pop("FLUX_DELEGATE_REGISTRY", None)
    sections = args.only or SECTIONS
    version = subprocess.run([FLUX, "version"], capture_output=True, text=True).stdout.split()
    say(
        f"flux-delegate benchmark: {os.cpu_count()} cores, flux-core"
        f" {version[1] if len(version) > 1 else '?'}, load average"
        f" {os.getloadavg()[0]:.2f}; N={args.jobs} R={args.rounds} K={args.handoffs}"
        f" B={args.burst}; {', '.join(sections)}"
    )
    results = {}
    setup = Setup(args)
    try:
        for name in SECTIONS:
            if name in sections:
                globals()[name](setup, args, results)
    finally:
        setup.cleanup()
        config.cleanup()
    summary(args, results)
    load = os.getloadavg()[0]
    busy = load > (os.cpu_count() or 1) * 0.5
    say(
        f"  (load average now {load:.2f}"
        + (": a busy machine, the timings measure its other work too)" if busy else ")")
    )
    failed = any(results[s].get("problems") or results[s].get("leftovers") for s in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
