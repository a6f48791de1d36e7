"""Hostile input: printf directives, odd text, odd types and odd URIs.

Whatever a user writes as a delegate:VALUE dependency or as
-S system.delegate=VALUE, and whatever a target says back (a remote
exception note), the job gets a clear outcome and the source broker keeps
running:

- the submit is rejected with a message, or
- the job ends with a severity 0 DelegationFailure whose note says why, or
- the job is delegated (a 'delegated' event) and ends with the remote
  job's outcome.

Text the plugin logs once went to flux_log() as the printf *format*: a
'%n' in a value, a URI or a remote note made the broker write through
garbage pointers.  Each such vector has a test of its own below, and a
seeded fuzz test throws a few hundred random values at one source.

Every wait has a timeout, and a dead broker is reported as such (with the
tail of its log), never as a hang.
"""

import json
import os
import random
import subprocess
import time

import pytest

from flux_instance import FLUX

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------
# Helpers: is the broker alive, what happened to a job.
# ---------------------------------------------------------------------------


def run(instance, *args, timeout=30, check=False):
    """'flux ARGS' against instance; a timeout is an assertion failure (a
    broker that hangs must fail the test, not hang it)."""
    try:
        return instance.run(*args, check=check, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"flux {' '.join(args)[:200]} did not return within {timeout}s"
            f" ({broker_state(instance) or 'broker process still there'})"
        )


def broker_pid(instance):
    return int(run(instance, "getattr", "broker.pid", check=True).stdout)


def broker_state(instance):
    """None if the instance's broker process is running, else what became
    of it."""
    pid = getattr(instance, "hostile_broker_pid", None)
    if instance.proc is None:
        return "the instance was stopped"
    rc = instance.proc.poll()
    if rc is not None:
        return f"'flux start' exited with status {rc}"
    if pid is not None:
        try:
            with open(f"/proc/{pid}/stat") as fp:
                state = fp.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return f"broker process {pid} is gone"
        if state in ("Z", "X"):
            return f"broker process {pid} is dead (state {state})"
    return None


def log_tail(instance, size=4000):
    """The end of the broker's log, whatever bytes a crash left in it."""
    try:
        with open(os.path.join(instance.dir, "broker.log"), "rb") as fp:
            fp.seek(0, os.SEEK_END)
            fp.seek(max(0, fp.tell() - size))
            return fp.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read it: {exc})"


def died(instance, what):
    """An assertion message for a broker that may have died."""
    state = broker_state(instance)
    if state is None:
        return what
    return (
        f"{what}\nTHE SOURCE BROKER DIED: {state}\n"
        f"tail of its log:\n{log_tail(instance)}"
    )


def assert_answers(instance):
    """The broker process runs, its job-manager answers, and a plain job
    runs to completion."""
    state = broker_state(instance)
    assert state is None, died(instance, "source broker is not running")
    ping = run(instance, "ping", "-c", "1", "job-manager", timeout=15)
    assert ping.returncode == 0, died(
        instance, f"job-manager does not answer a ping: {ping.stderr.strip()}"
    )
    jobs = run(instance, "jobs", "-a", timeout=15)
    assert jobs.returncode == 0, died(instance, f"flux jobs failed: {jobs.stderr.strip()}")
    submit = run(instance, "submit", "true", timeout=15)
    assert submit.returncode == 0, died(
        instance, f"a plain submit failed: {submit.stderr.strip()}"
    )
    jobid = submit.stdout.strip()
    status = run(instance, "job", "status", jobid, timeout=30)
    assert status.returncode == 0, died(
        instance, f"plain job {jobid} did not succeed: {status.stderr.strip()}"
    )
    assert broker_state(instance) is None, died(instance, "source broker died")


def assert_logged_verbatim(instance, text):
    """The broker log has text as it is: the path that once formatted it
    was taken (a test that logs nothing would guard nothing)."""
    dmesg = run(instance, "dmesg", timeout=15)
    assert dmesg.returncode == 0, died(instance, f"flux dmesg failed: {dmesg.stderr}")
    lines = [line for line in dmesg.stdout.splitlines() if "delegate" in line]
    assert any(text in line for line in lines), (
        f"{text!r} was never logged as it is; the plugin's log lines:\n"
        + "\n".join(lines)[-3000:]
    )


def start_source(instance, *conf):
    """Load the plugin with no registry (a user file that does not exist,
    whatever the tester's home holds) and note the broker's pid (to tell if
    it dies)."""
    nowhere = os.path.join(instance.dir, "no-registry.yaml")
    instance.load_plugin(None, f"registry={nowhere}", *conf)
    query = json.loads(run(instance, "jobtap", "query", "delegate.so", check=True).stdout)
    assert query["registry"] == [] and query["user-registry"] == nowhere, query
    instance.hostile_broker_pid = broker_pid(instance)
    return instance


def submit_and_wait(instance, submit_args, timeout=40):
    """Submit 'true' with submit_args; ("rejected", stderr) or
    ("ended", jobid, eventlog), the job having ended within timeout."""
    proc = run(instance, "submit", *submit_args, "true", timeout=30)
    if proc.returncode != 0:
        return "rejected", proc.stderr.strip()
    jobid = proc.stdout.strip()
    assert jobid, died(instance, f"flux submit {submit_args} printed no job id:"
                                 f" {proc.stderr.strip()}")
    wait = run(instance, "job", "wait-event", "-t", str(timeout), jobid, "clean",
               timeout=timeout + 15)
    if wait.returncode != 0:
        log = run(instance, "job", "eventlog", jobid, timeout=15)
        raise AssertionError(died(
            instance,
            f"waiting up to {timeout}s for job {jobid} ({submit_args}) to end"
            f" failed: {wait.stderr.strip()}\nits eventlog:\n{log.stdout}{log.stderr}",
        )) from None
    return "ended", jobid, instance.eventlog(jobid)


def delegation_failure(eventlog):
    """The job's severity 0 DelegationFailure context (checked), for a job
    that never ran here and was never delegated."""
    names = [e["name"] for e in eventlog]
    fatal = [e["context"] for e in eventlog
             if e["name"] == "exception" and e["context"]["severity"] == 0]
    assert len(fatal) == 1, eventlog
    exc = fatal[0]
    assert exc["type"] == "DelegationFailure", eventlog
    assert exc["note"].startswith("delegate: "), eventlog
    assert "handler error" not in exc["note"], eventlog
    assert "delegated" not in names, eventlog
    assert "alloc" not in names and "start" not in names, eventlog
    return exc


# ---------------------------------------------------------------------------
# 1. printf directives, one test per vector.
# ---------------------------------------------------------------------------

N4 = "%n%n%n%n"
S8 = "%s%s%s%s%s%s%s%s"

# (submit arguments, texts the submit error or the DelegationFailure note
# contains).  Either outcome is clear; a value the plugin can tell is wrong
# at submit is rejected there, the rest fail the job.
FORMAT_VECTORS = {
    # a. (job.new cannot reject: fails the job)
    "system.delegate=%n": (["-S", f"system.delegate={N4}"], [N4]),
    # b. the connect error names the URI
    "dependency local:///tmp/%n": (
        [f"--dependency=delegate:local:///tmp/{N4}"],
        [f"cannot connect to local:///tmp/{N4}"],
    ),
    # c.
    "system.delegate=%s": (["-S", f"system.delegate={S8}"], [S8]),
    "dependency %s": ([f"--dependency=delegate:{S8}"], [S8]),
    # the same directives through the other paths
    "dependency %n": ([f"--dependency=delegate:{N4}"], [N4]),
    "system.delegate=local:///tmp/%s": (
        ["-S", f"system.delegate=local:///tmp/{S8}"],
        [f"cannot connect to local:///tmp/{S8}"],
    ),
    "dependency foo://%n": (
        [f"--dependency=delegate:foo://{N4}"],
        [f"foo://{N4}", "unknown URI scheme 'foo'"],
    ),
    "dependency jobid:%n": ([f"--dependency=delegate:jobid:{N4}"], [f"jobid:{N4}"]),
    "dependency pid:%n": ([f"--dependency=delegate:pid:{N4}"], [f"pid:{N4}"]),
}


@pytest.mark.parametrize("vector", list(FORMAT_VECTORS))
def test_printf_directives_in_the_value(fresh_source, vector):
    """The value comes back verbatim in the submit error or the note
    (nothing formatted it), and the broker is still there."""
    submit_args, texts = FORMAT_VECTORS[vector]
    start_source(fresh_source, "connect-timeout=3")
    result = submit_and_wait(fresh_source, submit_args)
    if result[0] == "rejected":
        message = result[1]
        assert "delegate: " in message and "handler error" not in message, message
        for text in texts:
            assert text in message, message
    else:
        exc = delegation_failure(result[2])
        for text in texts:
            assert text in exc["note"], result[2]
    assert_answers(fresh_source)
    assert_logged_verbatim(fresh_source, N4 if N4 in " ".join(submit_args) else S8)


def test_printf_directives_in_a_remote_exception_note(fresh_source, target, request):
    """d. The target cancels the remote job with a note full of '%n': the
    note reaches the local DelegationFailure as it is."""
    start_source(fresh_source)
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sleep", "300")
    try:
        delegated = fresh_source.wait_event(jobid, "delegated", timeout=30)
    except AssertionError as exc:
        raise AssertionError(died(fresh_source, str(exc))) from None
    remote = str(delegated["context"]["jobid"])
    request.addfinalizer(lambda: target.run("cancel", remote, check=False))
    cancel = run(target, "cancel", "-m", N4, remote)
    assert cancel.returncode == 0, cancel.stderr
    try:
        fresh_source.wait_event(jobid, "clean", timeout=30)
    except AssertionError as exc:
        raise AssertionError(died(fresh_source, str(exc))) from None
    eventlog = fresh_source.eventlog(jobid)
    fatal = [e["context"] for e in eventlog
             if e["name"] == "exception" and e["context"]["severity"] == 0]
    assert len(fatal) == 1, eventlog
    assert fatal[0]["type"] == "DelegationFailure", eventlog
    assert N4 in fatal[0]["note"], eventlog
    assert "handler error" not in fatal[0]["note"], eventlog
    assert "finish" not in [e["name"] for e in eventlog], eventlog  # it failed, never finished
    assert_answers(fresh_source)
    assert_logged_verbatim(fresh_source, N4)


# ---------------------------------------------------------------------------
# 2. Fuzz: a few hundred random values against one source.
# ---------------------------------------------------------------------------

SEED = int(os.environ.get("HOSTILE_SEED", "20240613"))
RANDOM_CASES = 250  # and 2 of each listed value: about 420 in all
BATCH = 50
JOB_TIMEOUT = 40  # seconds for a job to end (the plugin's timeouts are 3s)

DIRECTIVES = ["%n", "%s", "%x", "%p", "%*d", "%1000000d", "%%", "%", "%.99999s",
              "%hhn", "%lln", "%99$s", "%-*.*s", "%c%c%c"]
TEXT = ["é", "ƒ", "😀", "👩‍👩‍👧", "\u202eevil\u202c", "שלום", "مرحبا", "e\u0301",
        "\u0300\u0301\u0302", "\u200b", "\ufeff", "中文", "\U0010ffff", "Ω≈ç√"]
CONTROLS = [chr(c) for c in range(1, 32)] + ["\x7f", "\x85", "\u2028", "\u00a0"]
SCHEMES = ["foo://", "pid:", "pid:abc", "pid:-1", "pid:0", "pid:1", "pid:999999999",
           "pid:99999999999999999999", "jobid:", "jobid:/", "jobid:ƒ", "ssh://",
           "ssh:///x", "ssh://host.invalid/x", "local://", "local:///", "local:",
           "local:////", "LOCAL:///tmp/x", "local:///dev/null", "local:///etc/passwd",
           "local:///nonexistent/local-0", "local://host/tmp/x", "file:///etc/passwd",
           "http://127.0.0.1:1/", "tcp://1.2.3.4:5", ":", "::", "://", "a:b:c",
           "jobid:ƒ2222222", "jobid:ƒ2222222/ƒ3333333"]
LABELS = ["big", "small", "home", "cluster-1", "default", "a.b", "x" * 64, "-", "_",
          "label_%n", "None", "null", "true", "0", "ƒ2222222", "f2222222",
          "18446744073709551615", "18446744073709551616", "-1", "ƒ/ƒ",
          "ƒ2222222/ƒ3333333"]
POLICIES = ["random", "random:x", "random:", "assign", "assign:", "assign:-1",
            "assign:99999999999999999999", "assign:1e9", "assign:0x10", "assign:%n",
            "least_pending", "least_pending:1", "shortest_match:", "shortest_match:%s",
            "no_such_policy:1"]
NON_STRINGS = [0, 1, -1, 1.5, 1e308, 99999999999999999999, True, False, None, [], {},
               ["local:///tmp/x"], {"uri": "%n%n"}, [[[[]]]], {"": None}]


def fuzz_value(rng):
    """A random string value from the categories above, sometimes glued."""
    kind = rng.choice(["directive", "text", "control", "scheme", "label", "policy",
                       "huge", "glued", "glued", "glued"])
    if kind == "directive":
        return "".join(rng.choice(DIRECTIVES) for _ in range(rng.randint(1, 12)))
    if kind == "text":
        return "".join(rng.choice(TEXT) for _ in range(rng.randint(1, 6)))
    if kind == "control":
        return rng.choice(["local:///tmp/", "", "big", "%n"]) + rng.choice(CONTROLS)
    if kind == "scheme":
        return rng.choice(SCHEMES)
    if kind == "label":
        return rng.choice(LABELS)
    if kind == "policy":
        return rng.choice(POLICIES)
    if kind == "huge":
        unit = rng.choice(["A", "%n", "é", "😀", "/", "local:///"])
        return rng.choice(["", "local:///tmp/", "foo://", "jobid:"]) + unit * (
            100000 // len(unit))
    parts = [rng.choice(SCHEMES + POLICIES + LABELS)]
    for _ in range(rng.randint(1, 3)):
        parts.append(rng.choice(DIRECTIVES + TEXT + ["/", "?", "#", ";", "@", ":"]))
    return "".join(parts)


def fuzz_cases(rng, target_uri):
    """[{dep: ..., sys: ..., delegate: bool}]: a dependency value (absent:
    no dependency), a system.delegate value (absent: not set), and
    whether the job must be delegated (to the real target).  Every listed
    scheme, label, policy and non-string goes both ways once; then come
    RANDOM_CASES random ones; all shuffled."""
    cases = []
    for value in SCHEMES + LABELS + POLICIES + NON_STRINGS:
        cases += [{"dep": value}, {"sys": value}]
    for _ in range(RANDOM_CASES):
        roll = rng.random()
        if roll < 0.03:  # the real target, by either path
            case = rng.choice([{"dep": target_uri}, {"sys": target_uri}])
            case["delegate"] = True
        elif roll < 0.50:
            case = {"dep": fuzz_value(rng)}
        elif roll < 0.53:  # dependency values that are no strings
            case = {"dep": rng.choice([[target_uri], {"uri": target_uri}])}
        elif roll < 0.85:
            case = {"sys": fuzz_value(rng)}
        elif roll < 0.90:
            case = {"sys": rng.choice([[target_uri], {"uri": target_uri}])}
        else:  # an empty dependency: system.delegate (if a string) decides
            case = {"dep": "", "sys": rng.choice([fuzz_value(rng), rng.choice(NON_STRINGS)])}
        cases.append(case)
    cases.append({"dep": target_uri, "delegate": True})
    cases.append({"sys": target_uri, "delegate": True})
    for case in cases:
        case.setdefault("delegate", False)
    rng.shuffle(cases)
    return cases


#: Run by 'flux python' against the source: submit every case at once,
#: follow every accepted job's eventlog until it ends or the deadline
#: passes, print one JSON line per case.
FUZZ_SCRIPT = r'''
import json, os, sys
import flux, flux.job
from flux.job import JobspecV1

cases = json.load(open(sys.argv[1]))
timeout = float(sys.argv[2])
h = flux.Flux()


def short(obj):
    if isinstance(obj, str) and len(obj) > 300:
        return obj[:300] + f"...[{len(obj)} chars]"
    if isinstance(obj, dict):
        return {k: short(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [short(v) for v in obj]
    return obj


futures = []
for case in cases:
    js = JobspecV1.from_command(["true"])
    js.environment = dict(os.environ)
    js.cwd = os.getcwd()
    system = js.jobspec["attributes"]["system"]
    if "dep" in case:
        system["dependencies"] = [{"scheme": "delegate", "value": case["dep"]}]
    if "sys" in case:
        system["delegate"] = case["sys"]
    futures.append(flux.job.submit_async(h, json.dumps(js.jobspec)))

results = []
watching = set()


def on_event(future, result):
    try:
        event = future.get_event()
    except OSError as exc:
        result["watch_error"] = str(exc)
        event = None
    if event is None:
        watching.discard(id(result))
        if not watching:
            h.reactor_stop()
        return
    result["events"].append(
        {"name": event.name, "timestamp": event.timestamp, "context": short(event.context)}
    )


for future in futures:
    result = {}
    results.append(result)
    try:
        result["id"] = int(future.get_id())
    except OSError as exc:
        result["error"] = exc.strerror or str(exc)
        result["errno"] = exc.errno
        continue
    result["events"] = []
    watching.add(id(result))
    flux.job.event_watch_async(h, result["id"]).then(on_event, result)

if watching:
    timer = h.timer_watcher_create(timeout, lambda *a: h.reactor_stop())
    timer.start()
    h.reactor_run()
for result in results:
    print(json.dumps(result))
'''


def flux_core_rejects(case):
    """The message flux-core itself rejects the case's jobspec with (before
    the plugin sees it), or None."""

    def too_big(value):
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return not -2**63 <= value < 2**63
        if isinstance(value, list):
            return any(too_big(v) for v in value)
        if isinstance(value, dict):
            return any(too_big(v) for v in value.values())
        return False

    if too_big(case.get("dep")) or too_big(case.get("sys")):
        return "too big integer"  # jansson: not JSON it can read
    if "dep" in case and not isinstance(case["dep"], str):
        return "dependency value must be a string"  # the job-manager's check
    return None


def classify(case, result, target_uri):
    """What became of one case; a list of what is wrong with it (empty if
    it got exactly one clear outcome)."""
    wrong = []
    by_flux = flux_core_rejects(case)
    if "error" in result:
        if not result["error"].strip():
            wrong.append("rejected with an empty message")
        elif by_flux is not None:
            if by_flux not in result["error"]:
                wrong.append(f"rejected, but not with '{by_flux}': {result['error']}")
        elif "handler error" in result["error"]:
            wrong.append(f"rejected by a handler error: {result['error']}")
        elif not result["error"].startswith("delegate: "):
            wrong.append(f"rejected, but not by delegate: {result['error']}")
        if case["delegate"]:
            wrong.append("the real target was rejected")
        return "rejected", wrong
    if by_flux is not None:
        wrong.append(f"flux-core accepted a jobspec it rejects ('{by_flux}')")
    events = result["events"]
    names = [e["name"] for e in events]
    if "watch_error" in result:
        wrong.append(f"eventlog watch failed: {result['watch_error']}")
    if "clean" not in names:
        wrong.append(f"did not end within {JOB_TIMEOUT}s (events: {names})")
    fatal = [e["context"] for e in events
             if e["name"] == "exception" and e["context"].get("severity") == 0]
    delegated = [e["context"] for e in events if e["name"] == "delegated"]
    if delegated:
        outcome = "delegated"
        if len(delegated) != 1:
            wrong.append(f"{len(delegated)} delegated events")
        if delegated[0].get("uri") != target_uri:
            wrong.append(f"delegated to {delegated[0].get('uri')!r}")
        if not case["delegate"]:
            wrong.append("delegated, but names no reachable target")
        if fatal:
            wrong.append(f"delegated, then an exception: {fatal}")
        finish = [e["context"] for e in events if e["name"] == "finish"]
        if "clean" in names and [f.get("status") for f in finish] != [0]:
            wrong.append(f"delegated 'true' did not finish with status 0: {finish}")
    elif fatal:
        outcome = "failed"
        exc = fatal[0]
        if len(fatal) != 1:
            wrong.append(f"{len(fatal)} fatal exceptions: {fatal}")
        if exc.get("type") != "DelegationFailure":
            wrong.append(f"exception of type {exc.get('type')!r}: {exc}")
        if not str(exc.get("note", "")).startswith("delegate: ") or not exc["note"][10:].strip():
            wrong.append(f"exception note says nothing: {exc}")
        if "handler error" in str(exc.get("note")):
            wrong.append(f"handler error: {exc}")
        if case["delegate"]:
            wrong.append(f"the real target failed: {exc}")
    else:
        outcome = "none"
        wrong.append(f"neither delegated nor failed (events: {names})")
    if outcome != "delegated" and ("alloc" in names or "start" in names):
        wrong.append(f"ran here without being delegated (events: {names})")
    return outcome, wrong


def show(value, limit=80):
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def test_fuzz_values(fresh_source, target, tmp_path):
    rng = random.Random(SEED)
    print(f"hostile-input fuzz: seed {SEED} (HOSTILE_SEED=N to change it)")
    cases = fuzz_cases(rng, target.uri)
    start_source(fresh_source, "connect-timeout=3", "submit-timeout=3",
                 "preflight-timeout=3")
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ_SCRIPT)
    problems = []
    tally = {}
    samples = {}
    started = time.time()
    for first in range(0, len(cases), BATCH):
        batch = cases[first:first + BATCH]
        casefile = tmp_path / f"cases-{first}.json"
        casefile.write_text(json.dumps([{k: v for k, v in c.items() if k != "delegate"}
                                        for c in batch]))
        try:
            proc = subprocess.run(
                [FLUX, "python", str(script), str(casefile), str(JOB_TIMEOUT)],
                env=fresh_source.env(), capture_output=True, text=True,
                timeout=JOB_TIMEOUT + 60,
            )
        except subprocess.TimeoutExpired:
            proc = None
        where = f"the batch of cases {first}..{first + len(batch) - 1} (seed {SEED})"
        listing = f"\nthe cases of {where}:\n" + "\n".join(
            f"  case {n}: {show(c, 100)}" for n, c in enumerate(batch, start=first))
        assert proc is not None, died(fresh_source, f"fuzz script hung on {where}") + listing
        # The broker answers between batches.
        assert broker_state(fresh_source) is None, died(
            fresh_source, f"source broker died during {where}") + listing
        ping = run(fresh_source, "ping", "-c", "1", "job-manager", timeout=15)
        assert ping.returncode == 0, died(
            fresh_source, f"no ping after {where}: {ping.stderr.strip()}") + listing
        assert proc.returncode == 0, died(
            fresh_source, f"fuzz script failed on {where}:\n{proc.stderr[-3000:]}"
        ) + listing
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        assert len(results) == len(batch), proc.stdout[-2000:]
        for n, (case, result) in enumerate(zip(batch, results), start=first):
            outcome, wrong = classify(case, result, target.uri)
            tally[outcome] = tally.get(outcome, 0) + 1
            detail = result.get("error") or next(
                (e["context"].get("note") for e in result.get("events", [])
                 if e["name"] == "exception"), None) or next(
                (f"remote {e['context'].get('jobid')}" for e in result.get("events", [])
                 if e["name"] == "delegated"), None)
            stamps = {e["name"]: e.get("timestamp") for e in result.get("events", [])}
            took = (f" in {stamps['clean'] - stamps['submit']:.1f}s"
                    if stamps.get("clean") and stamps.get("submit") else "")
            samples.setdefault(outcome, []).append(
                f"case {n} dep={show(case.get('dep', '-'))} sys={show(case.get('sys', '-'))}"
                f" -> {outcome}{took}: {show(detail, 160)}"
            )
            for what in wrong:
                problems.append(
                    f"case {n} dep={show(case.get('dep', '-'))}"
                    f" sys={show(case.get('sys', '-'))} (job {result.get('id')}): {what}"
                )
    elapsed = time.time() - started
    print(f"fuzz outcomes in {elapsed:.1f}s: {tally}")
    everything = os.environ.get("HOSTILE_SHOW_ALL")  # =1: every case's outcome
    for outcome, lines in samples.items():
        for line in lines if everything else lines[:4]:
            print(f"  {line}")
    assert not problems, f"seed {SEED}: {len(problems)} problems:\n" + "\n".join(problems[:40])
    # Every kind of outcome was exercised (the generator is not degenerate).
    assert set(tally) == {"rejected", "failed", "delegated"}, tally
    # No handler error in the broker log (its errors go to the log file:
    # the dmesg ring buffer may have let early ones go), and the broker
    # still works.
    with open(os.path.join(fresh_source.dir, "broker.log"), "rb") as fp:
        errors = [line for line in fp.read().decode("utf-8", "replace").splitlines()
                  if "Traceback" in line or "handler error" in line]
    assert errors == [], "\n".join(errors)[-4000:]
    assert_answers(fresh_source)
    # No job is left behind: all of them ended.
    active = run(fresh_source, "jobs", "--json", "-f", "pending,running", timeout=15)
    assert active.returncode == 0, active.stderr
    left = json.loads(active.stdout)["jobs"] if active.stdout.strip() else []
    assert left == [], [j["id"] for j in left]
