"""Real Flux instances for the integration tests.

FluxInstance starts 'flux start' in the background with an initial
program that writes the instance's URI to a file and then waits until a
"run" file is removed, so a test can talk to the instance for as long as
it needs and stop it cleanly.  Commands are run against it with FLUX_URI.
"""

import collections
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

FLUX = os.environ.get("FLUX", shutil.which("flux") or "flux")

#: The delegate.so and handler under test (set by 'make check').
PLUGIN = os.environ.get("DELEGATE_PLUGIN", "")
HANDLER = os.environ.get("DELEGATE_HANDLER", "")
#: The flux_delegate package under test: the source tree's, never a copy
#: installed earlier.
PYTHONPATH = os.environ.get("DELEGATE_PYTHONPATH") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "src", "python"
)


#: The flux remote command under test: the source tree's.
CMDDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "cmd")


def command_env(home):
    """Environment for running 'flux remote' from the source tree with a
    HOME (and so a user registry) of its own."""
    return {
        "FLUX_EXEC_PATH_PREPEND": CMDDIR,
        "FLUX_PYTHONPATH_PREPEND": PYTHONPATH,
        "HOME": str(home),
        "XDG_CONFIG_HOME": os.path.join(str(home), ".config"),
        "FLUX_DELEGATE_REGISTRY": "",
    }


#: Broker config that loads flux's job prolog/epilog plugin: add a
#: [job-manager.prolog] or [job-manager.epilog] table to it.
PERILOG_CONFIG = '[job-manager]\nplugins = [ { load = "perilog.so" } ]\n'


def plugin_conf_toml(**extra):
    """The conf table of [job-manager] plugins for the plugin under test."""
    conf = dict(handler=HANDLER, pythonpath=PYTHONPATH, **extra)
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in conf.items()) + " }"


class CommandError(AssertionError):
    pass


class FluxClient:
    """Run flux commands against the instance at 'uri'."""

    def __init__(self, uri):
        self.uri = uri

    # -- commands ------------------------------------------------------------

    def env(self):
        env = dict(os.environ)
        env["FLUX_URI"] = self.uri
        return env

    def run(self, *args, check=True, timeout=60, input=None, env=None):
        """Run 'flux ARGS' against this instance (with extra environment
        'env'); CompletedProcess."""
        proc = subprocess.run(
            [FLUX, *args],
            env=dict(self.env(), **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise CommandError(
                f"flux {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def submit(self, *args):
        return self.run("submit", *args).stdout.strip()

    def eventlog(self, jobid, path="eventlog"):
        out = self.run("job", "eventlog", "-f", "json", "-p", path, jobid).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_event(self, jobid, name, timeout=30, match=None):
        """Wait for event 'name' (with context key=value 'match') and return
        it as a dict."""
        args = ["job", "wait-event", "-f", "json", "-t", str(timeout)]
        if match:
            args += ["-m", match]
        proc = self.run(*args, jobid, name, timeout=timeout + 10, check=False)
        if proc.returncode != 0:
            # Say what did happen, so that a failure can be understood.
            log = self.run("job", "eventlog", jobid, check=False)
            raise CommandError(
                f"no '{name}' event for {jobid}: {proc.stderr.strip()}\n"
                f"its eventlog:\n{log.stdout}{log.stderr}"
            )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_memo(self, jobid, key, timeout=30):
        """Wait for a memo event setting 'key' (e.g. a batch job's "uri")."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for event in self.eventlog(jobid):
                if event["name"] == "memo" and key in event["context"]:
                    return event["context"][key]
            time.sleep(0.1)
        raise AssertionError(f"no memo {key} for {jobid} within {timeout}s")

    def wait_running(self, timeout=60):
        """Wait until the instance has started (rc1 done: its job-ingest
        takes submits).  A batch job's "uri" memo comes before that."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            uptime = self.run("uptime", check=False)
            if uptime.returncode == 0 and " run " in uptime.stdout:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.uri} not running within {timeout}s")

    def status(self, jobid, timeout=60):
        """'flux job status' exit code of a job (waits for it to end)."""
        return self.run("job", "status", jobid, check=False, timeout=timeout).returncode

    def exception(self, jobid):
        """The job's first fatal exception event context, or None."""
        for event in self.eventlog(jobid):
            if event["name"] == "exception" and event["context"]["severity"] == 0:
                return event["context"]
        return None

    def jobs(self):
        """All jobs of this instance (flux jobs -a) as a list of dicts."""
        out = self.run("jobs", "-a", "--json").stdout
        return json.loads(out)["jobs"] if out.strip() else []

    def dmesg(self):
        return self.run("dmesg").stdout

    def sched_modules(self):
        """Names of the loaded scheduler modules (sched-simple, or Fluxion's)."""
        out = self.run("module", "list").stdout.splitlines()[1:]
        return [line.split()[0] for line in out if line.split() and line.split()[0].startswith("sched")]

    def remove_scheduler(self):
        """Unload the scheduler, whichever it is (Fluxion's qmanager first)."""
        for _ in range(10):  # removing one Fluxion module may take others
            names = sorted(self.sched_modules(), key=lambda n: "qmanager" not in n)
            if not names:
                return
            self.run("module", "remove", names[0])

    def use_sched_simple(self):
        """Run flux-core's own scheduler (no Fluxion) from now on."""
        self.remove_scheduler()
        self.run("module", "load", "sched-simple")
        deadline = time.time() + 10
        while any("fluxion" in name for name in self.sched_modules()):
            if time.time() > deadline:
                raise AssertionError(f"Fluxion still loaded: {self.sched_modules()}")
            time.sleep(0.1)


class FluxInstance(FluxClient):
    """A Flux instance of its own, started and stopped by the test."""

    def __init__(self, size=1, config=None, statedir=None, rundir=None, name="flux",
                 env=None, hosts=None):
        self.size = size
        self.hosts = hosts  # fake hostnames of its brokers (a hostlist)
        self.broker_env = env
        self.config = config
        self.statedir = statedir
        self.rundir = rundir
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"delegate-{name}-")
        self.uri = None
        self.proc = None

    # -- lifetime ------------------------------------------------------------

    def start(self, timeout=60):
        urifile = os.path.join(self.dir, "uri")
        self.runfile = os.path.join(self.dir, "run")
        open(self.runfile, "w").close()
        if os.path.exists(urifile):
            os.unlink(urifile)
        args = [FLUX, "start", f"--test-size={self.size}"]
        if self.hosts is not None:
            args.append(f"--test-hosts={self.hosts}")
        if self.config is not None:
            confdir = os.path.join(self.dir, "conf.d")
            os.makedirs(confdir, exist_ok=True)
            with open(os.path.join(confdir, "test.toml"), "w") as fp:
                fp.write(self.config)
            args.append(f"--config-path={confdir}")
        if self.statedir is not None:
            args.append(f"-Sstatedir={self.statedir}")
        if self.rundir is not None:
            # A fixed rundir keeps the same local:// URI across restarts.
            args.append(f"--test-rundir={self.rundir}")
        script = (
            f"flux getattr local-uri > {shlex.quote(urifile)}.tmp"
            f" && mv {shlex.quote(urifile)}.tmp {shlex.quote(urifile)}"
            f" && while test -e {shlex.quote(self.runfile)}; do sleep 0.1; done"
        )
        self.log = open(os.path.join(self.dir, "broker.log"), "w")
        self.proc = subprocess.Popen(
            args + ["sh", "-c", script],
            env=dict(os.environ, **(self.broker_env or {})),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while not os.path.exists(urifile):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.broker_log()}")
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {self.broker_log()}")
            time.sleep(0.05)
        with open(urifile) as fp:
            self.uri = fp.read().strip()
        return self

    def stop(self, timeout=60):
        if self.proc is None:
            return
        if os.path.exists(self.runfile):
            os.unlink(self.runfile)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None
        self.log.close()

    def kill(self):
        """Kill the instance at once (SIGKILL), as a crash would."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def broker_log(self, tail=4000):
        """The broker's stdout and stderr: its last 'tail' characters, or
        all of it (tail=None)."""
        try:
            with open(os.path.join(self.dir, "broker.log")) as fp:
                text = fp.read()
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    # -- the plugin under test -------------------------------------------------

    def load_plugin(self, handler=None, *conf):
        handler = handler or HANDLER
        if not any(c.startswith("pythonpath=") for c in conf):
            conf += (f"pythonpath={PYTHONPATH}",)
        return self.run("jobtap", "load", PLUGIN, f"handler={handler}", *conf)

    def remove_plugin(self):
        return self.run("jobtap", "remove", "delegate.so")


def broker_fds(pid):
    """The broker's open files by kind: pipe, socket, anon_inode:[eventpoll],
    anon_inode:[eventfd], ... and file (everything else)."""
    kinds = collections.Counter()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:  # closed while listed
            continue
        if link.startswith(("pipe:", "socket:")):
            kinds[link.split(":")[0]] += 1
        elif link.startswith("anon_inode:"):
            kinds[link] += 1
        else:
            kinds["file"] += 1
    return kinds


def fds_grown(before, after):
    """{kind: how many more} of what after has more of than before."""
    return {kind: after[kind] - before[kind] for kind in after if after[kind] > before[kind]}


def settled_fds(pid, at_most=None, timeout=10):
    """broker_fds() once it is steady: three reads 0.2 s apart agree and,
    given at_most, nothing has grown from it, if it comes to that within
    timeout (a leak stays, a late close does not).  For counts that mean
    something, the broker's job-ingest must run no validator (see
    conftest.quiet_source): it keeps the validator's process, and sockets
    to it, for 5 s after the last submit."""
    deadline = time.time() + timeout
    reads = [broker_fds(pid)]
    while time.time() < deadline:
        time.sleep(0.2)
        reads.append(broker_fds(pid))
        steady = len(reads) >= 3 and reads[-1] == reads[-2] == reads[-3]
        if steady and (at_most is None or not fds_grown(at_most, reads[-1])):
            break
    return reads[-1]
