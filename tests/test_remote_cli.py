"""'flux remote' on real instances: list, show, add, remove and check.

The source has the plugin loaded, with the user registry file at a path of
the test's (registry=PATH), and one broker-config entry: big, an instance
of 2 brokers.  small (1 broker) and gone (a socket that is not there) are
added to the user's file by the tests, with 'flux remote add'.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import yaml
from conftest import start_instance
from flux_instance import CMDDIR, CommandError, FLUX, PYTHONPATH, command_env

pytestmark = pytest.mark.integration

TREE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PYDIR = PYTHONPATH


@pytest.fixture(scope="module")
def site(request, tmp_path_factory):
    small = start_instance(request, name="small", size=1)
    big = start_instance(request, name="big", size=2)
    home = tmp_path_factory.mktemp("home")
    config = f'[[delegate]]\nlabel = "big"\nuri = "{big.uri}"\n'
    source = start_instance(request, name="remote-src", config=config)
    registry = str(tmp_path_factory.mktemp("registry") / "delegate.yaml")
    source.load_plugin(None, f"registry={registry}")
    source.small, source.big, source.registry = small, big, registry
    source.gone = f"local://{tmp_path_factory.mktemp('gone')}/local-0"
    # The command runs with a HOME of its own: the file it edits is the
    # one the plugin reads (registry=PATH), found by asking the plugin.
    source.cmd_env = command_env(home)
    remote(source, "add", "gone", source.gone)
    return source


def remote(instance, *args, check=True, env=None, timeout=60):
    """Run 'flux remote ARGS' against instance, from the source tree."""
    env = dict(getattr(instance, "cmd_env", {}) or {}, **(env or {}))
    env.setdefault("FLUX_EXEC_PATH_PREPEND", CMDDIR)
    env.setdefault("FLUX_PYTHONPATH_PREPEND", PYDIR)
    return instance.run("remote", *args, check=check, env=env, timeout=timeout)


def listing(site, *args):
    return {r["label"]: r for r in json.loads(remote(site, "list", "--json", *args).stdout)["remotes"]}


def check_json(site, *args):
    proc = remote(site, "check", "--json", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def verdicts(record):
    return {c.get("label") or c["uri"]: c["verdict"] for c in record["candidates"]}


@contextlib.contextmanager
def added(site, label, uri, *options):
    remote(site, "add", label, uri, *options)
    try:
        yield
    finally:
        remote(site, "remove", label, check=False)


@contextlib.contextmanager
def silent_sockets(count):
    """Sockets that accept connections (the kernel's backlog) and never
    answer: a connect hangs in flux's handshake."""
    directory = tempfile.mkdtemp(prefix="delegate-silent-")
    sockets = []
    try:
        for i in range(count):
            s = socket.socket(socket.AF_UNIX)
            s.bind(os.path.join(directory, f"local-{i}"))
            s.listen(64)
            sockets.append(s)
        yield [f"local://{directory}/local-{i}" for i in range(count)]
    finally:
        for s in sockets:
            s.close()
        shutil.rmtree(directory, ignore_errors=True)


def field(out, key):
    """The value of 'KEY: value' in 'flux remote show' output."""
    for line in out.splitlines()[1:]:
        name, _, value = line.strip().partition(":")
        if name == key:
            return value.strip()
    return None


def file_entries(site):
    with open(site.registry) as fp:
        return yaml.safe_load(fp)["delegate"]


# -- help and usage ------------------------------------------------------------


def test_help_of_every_subcommand(site):
    out = remote(site, "--help").stdout
    for name in ("list", "show", "add", "remove", "check"):
        assert name in out
    for name in ("list", "show", "add", "remove"):
        proc = remote(site, name, "--help")
        assert proc.stdout.startswith(f"usage: flux-remote {name}"), proc.stdout
    proc = remote(site, "check", "--help")
    assert proc.stdout.startswith("usage: flux remote check"), proc.stdout
    # flux submit's own options, and check's.
    for option in ("--nodes", "--time-limit", "--queue", "--setattr", "--to", "--timeout"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("bogus",),
        ("list", "--timeout=-1"),
        ("list", "--bogus"),
        ("add", "onlylabel"),
        ("remove",),
        ("show",),
        ("check",),
        ("check", "-N", "x", "true"),
        ("check", "--bogus", "true"),
        ("check", "--timeout=0", "true"),
    ],
)
def test_usage_errors_exit_2(site, args):
    proc = remote(site, *args, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "usage:" in proc.stderr


def test_flux_help_lists_the_command(site):
    pattern = os.path.join(CMDDIR, "help.d", "*.json")
    proc = site.run("help", env={"FLUX_CMDHELP_PATTERN": pattern}, check=False)
    assert "   remote " in proc.stdout + proc.stderr


def test_installed_command_needs_no_variable(site):
    cmddir = subprocess.run(
        ["pkg-config", "--variable=fluxcmddir", "flux-core"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.exists(os.path.join(cmddir, "flux-remote.py")):
        pytest.skip(f"flux-remote.py is not installed in {cmddir} (run make install)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLUX_"))}
    env["FLUX_URI"] = site.uri
    proc = subprocess.run([FLUX, "remote", "list", "-o", "uri"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "big" in proc.stdout


def test_make_install_puts_the_command_where_flux_finds_it(tmp_path):
    """'make install' for real, into the configured prefix, but in a mount
    namespace of its own over an overlay of the prefix (nothing outside
    changes): then 'flux remote' runs with no variable and 'flux help'
    lists it."""
    if not os.path.exists(os.path.join(TREE, "Makefile")):
        pytest.skip("the source tree is not configured")
    with open(os.path.join(TREE, "Makefile")) as fp:
        prefix = next(line.split("=", 1)[1].strip() for line in fp if line.startswith("prefix ="))
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(), work.mkdir()
    home = tmp_path / "home"
    (home / ".config" / "flux").mkdir(parents=True)
    (home / ".config" / "flux" / "delegate.yaml").write_text(
        "delegate:\n- label: home\n  uri: ssh://login.example.org/run/flux/local\n"
    )
    script = (
        f"mount -t overlay overlay -o lowerdir={prefix},upperdir={upper},workdir={work}"
        f" {prefix} || exit 77\n"
        f"make -s -C {TREE} install >/dev/null || exit 1\n"
        f"env -i PATH=/usr/bin:/bin:{prefix}/bin HOME={home} flux remote list -o uri || exit 1\n"
        f"env -i PATH=/usr/bin:/bin:{prefix}/bin HOME={home} flux help 2>&1\n"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if proc.returncode == 77 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"no private overlay of {prefix} here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "home       user   ssh://login.example.org/run/flux/local" in proc.stdout
    assert "   remote " in proc.stdout
    cmddir = subprocess.run(
        ["pkg-config", "--variable=fluxcmddir", "flux-core"], capture_output=True, text=True
    ).stdout.strip()
    assert os.path.exists(f"{upper}/{os.path.relpath(cmddir, prefix)}/flux-remote.py")


# -- list ----------------------------------------------------------------------


def test_list_table_and_json(site):
    with added(site, "small", site.small.uri):
        rows = listing(site)
        assert list(rows) == ["big", "gone", "small"]  # config first, then the file's
        big, gone, small = rows["big"], rows["gone"], rows["small"]
        assert (big["origin"], big["file"]) == ("config", None)
        assert (small["origin"], small["file"]) == ("user", site.registry)
        for row, nodes in ((big, 2), (small, 1)):
            assert row["state"] == "up" and row["reason"] is None
            assert row["scheduler"] == "fluxion"
            assert row["nodes"] == {"free": nodes, "total": nodes}
            assert row["cores"]["total"] >= nodes and row["gpus"]["total"] == 0
            assert row["pending"] == 0 and row["running"] == 0
            assert row["feasibility"] is True
            assert row["version"]
        assert big["cores"]["total"] == 2 * small["cores"]["total"]
        assert gone["state"] == "unreachable" and "not found" in gone["reason"]
        assert gone["nodes"] is None and gone["feasibility"] is None

        lines = remote(site, "list").stdout.splitlines()
        assert lines[0].split()[:11] == [
            "LABEL", "ORIGIN", "STATE", "SCHED", "NODES", "CORES", "GPUS", "PEND", "RUN",
            "FEAS", "URI",
        ]
        table = {line.split()[0]: line for line in lines[1:]}
        assert table["big"].split()[1:5] == ["config", "up", "fluxion", "2/2"]
        assert table["small"].split()[1:5] == ["user", "up", "fluxion", "1/1"]
        assert table["gone"].split()[1:3] == ["user", "unreachable"]
        assert site.gone in table["gone"] and "not found" in table["gone"]

        out = remote(site, "list", "--no-header", "-o", "{label}:{nnodes}:{free_cores}").stdout
        assert out.split() == [
            "big:2:" + str(big["cores"]["free"]),
            "gone::",
            "small:1:" + str(small["cores"]["free"]),
        ]
        out = remote(site, "list", "-o", "uri").stdout.splitlines()
        assert out[0].split() == ["LABEL", "ORIGIN", "URI"]
        assert out[1].split() == ["big", "config", site.big.uri]
        assert "default" in remote(site, "list", "-o", "help").stdout


def test_list_counts_jobs_pending_and_running_there(site):
    held = site.big.submit("--urgency=0", "true")
    running = site.big.submit("sleep", "300")
    site.big.wait_event(running, "start")
    try:
        big = listing(site)["big"]
        assert (big["pending"], big["running"]) == (1, 1)
        assert big["cores"]["free"] == big["cores"]["total"] - 1
    finally:
        site.big.run("cancel", held, running)


def test_list_asks_every_target_at_once(site):
    """Three targets that never answer cost one timeout, not three, and the
    others are still shown."""
    with silent_sockets(3) as uris:
        for i, uri in enumerate(uris):
            remote(site, "add", f"silent{i}", uri)
        try:
            start = time.time()
            rows = listing(site, "--timeout=2")
            elapsed = time.time() - start
        finally:
            for i in range(3):
                remote(site, "remove", f"silent{i}")
    assert elapsed < 5.0, elapsed  # one after the other: at least 6s
    for i in range(3):
        assert rows[f"silent{i}"]["state"] == "unreachable"
        assert rows[f"silent{i}"]["reason"] == "could not connect within 2s"
    assert rows["big"]["state"] == "up"


def test_list_without_an_instance_shows_the_users_file(site, tmp_path):
    path = tmp_path / "delegate.yaml"
    path.write_text(f"delegate:\n- label: elsewhere\n  uri: {site.big.uri}\n")
    env = dict(os.environ, FLUX_EXEC_PATH_PREPEND=CMDDIR, FLUX_PYTHONPATH_PREPEND=PYDIR)
    env.pop("FLUX_URI", None)
    env["FLUX_DELEGATE_REGISTRY"] = str(path)
    proc = subprocess.run(
        [FLUX, "remote", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "cannot connect to a Flux instance" in proc.stderr
    (row,) = json.loads(proc.stdout)["remotes"]
    assert (row["label"], row["state"], row["origin"]) == ("elsewhere", "up", "user")


def test_the_file_edited_is_the_one_the_plugin_reads(site, tmp_path):
    other = str(tmp_path / "other.yaml")
    proc = remote(site, "list", "-o", "uri", env={"FLUX_DELEGATE_REGISTRY": other})
    assert f"the delegate plugin of this instance reads {site.registry}" in proc.stderr
    assert "gone" in proc.stdout and not os.path.exists(other)


# -- add, show, remove -----------------------------------------------------------


def test_add_is_used_by_the_running_plugin_and_remove_too(site):
    remote(site, "add", "small", site.small.uri, "--set", 'allowed-projects=["chem"]', "--check")
    try:
        assert file_entries(site)[-1] == {
            "label": "small",
            "uri": site.small.uri,
            "allowed-projects": ["chem"],
        }
        jobid = site.submit("--dependency=delegate:small", "--job-name=via-label", "true")
        delegated = site.wait_event(jobid, "delegated")["context"]
        assert (delegated["label"], delegated["uri"]) == ("small", site.small.uri)
        assert site.status(jobid) == 0
        assert "via-label" in [j["name"] for j in site.small.jobs()]

        out = remote(site, "show", "small").stdout
        assert out.splitlines()[0] == "* remote small"
        assert field(out, "URI") == site.small.uri
        assert field(out, "Origin") == f"user registry file {site.registry}"
        assert field(out, "allowed-projects") == '["chem"]'
        assert field(out, "State") == "up"
        assert field(out, "Nodes") == "1 free of 1"
        shown = json.loads(remote(site, "show", "--json", "small").stdout)
        assert shown["extra"] == {"allowed-projects": ["chem"]} and shown["state"] == "up"
    finally:
        remote(site, "remove", "small")
    assert [e["label"] for e in file_entries(site)] == ["gone"]
    time.sleep(1.2)  # the plugin looks at the file's stat at most once a second
    with pytest.raises(CommandError, match="registry label or policy"):
        site.submit("--dependency=delegate:small", "true")


def test_add_resolves_a_pid_to_the_instance_uri(site):
    pid = site.small.run("getattr", "broker.pid").stdout.strip()
    with added(site, "bypid", f"pid:{pid}"):
        assert file_entries(site)[-1] == {"label": "bypid", "uri": site.small.uri}


@pytest.mark.parametrize(
    "args, message",
    [
        (("big", "local:///tmp/x"), "already exists in the broker config"),
        (("other", "BIG"), "is already in the broker config of this instance as 'big'"),
        (("gone", "local:///tmp/x"), "remote 'gone' already exists"),
        (("again", "GONE"), "is already in the registry as 'gone'"),
        (("random", "local:///tmp/x"), "is the name of a policy"),
        (("a:b", "local:///tmp/x"), "may not contain ':' or '/'"),
        (("x", "http://host/path"), "unknown URI scheme|No plugin for URI scheme"),
        (("x", "not a uri"), "white space"),
        (("x", "ssh:///path"), "names no host"),
        (("x", "SELF"), "this instance itself"),
        (("x", "local:///tmp/nothing-here/local-0", "--check"), "cannot connect to"),
        (("x", "local:///tmp/x", "--set", "uri=y"), "given as an argument"),
    ],
)
def test_add_refuses(site, args, message):
    uris = {"BIG": site.big.uri, "GONE": site.gone, "SELF": site.uri}
    args = tuple(uris.get(a, a) for a in args)
    before = open(site.registry).read()
    proc = remote(site, "add", *args, check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("flux-remote: ERROR: "), proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert open(site.registry).read() == before


def test_config_entries_are_not_removed_from_here(site):
    before = open(site.registry).read()
    proc = remote(site, "remove", "big", check=False)
    assert proc.returncode == 1
    assert "is in the broker config of this instance" in proc.stderr
    assert "cannot be removed with flux remote" in proc.stderr
    assert open(site.registry).read() == before
    assert "big" in listing(site)
    proc = remote(site, "remove", "nosuch", check=False)
    assert proc.returncode == 1 and "no such remote 'nosuch'" in proc.stderr


def test_show(site):
    out = remote(site, "show", "big").stdout
    assert field(out, "Origin") == "broker config of this instance ([[delegate]])"
    assert field(out, "Nodes") == "2 free of 2"
    assert field(out, "Scheduler") == "fluxion, answers feasibility checks"
    assert field(out, "Jobs") == "0 pending, 0 running"
    out = remote(site, "show", "gone").stdout
    assert field(out, "State").startswith("unreachable (") and "not found" in out
    proc = remote(site, "show", "nosuch", check=False)
    assert proc.returncode == 1 and "no such remote 'nosuch'" in proc.stderr


# -- check ---------------------------------------------------------------------


def test_check_answers_as_the_plugin_does(site):
    with added(site, "small", site.small.uri):
        rc, record = check_json(site, "-N2", "true")
        assert rc == 0
        assert verdicts(record) == {"big": "feasible", "gone": "unreachable", "small": "infeasible"}
        assert record["choice"] == "big" and record["policy"] == "least_pending"
        # The plugin's own pre-flight of the same job says the same.
        jobid = site.submit("--dependency=delegate", "-N2", "true")
        choice = site.wait_event(jobid, "delegate-choice")["context"]
        assert verdicts(choice) == verdicts(record)
        assert choice["choice"] == record["choice"]
        assert site.status(jobid) == 0

        rc, record = check_json(site, "-n1", "true")
        assert rc == 0 and verdicts(record)["small"] == "feasible"
        assert record["order"] == ["big", "small"]  # least_pending: a tie keeps registry order


def test_check_no_target_can_run_it(site):
    with added(site, "small", site.small.uri):
        proc = remote(site, "check", "-N", "99", "true", check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split()[:4] == ["LABEL", "VERDICT", "PEND", "URI"]
        rows = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
        assert rows == {"big": "infeasible", "gone": "unreachable", "small": "infeasible"}
        assert lines[-1].startswith("no target can run this job: ")
        assert f"big ({site.big.uri}): infeasible: " in lines[-1]
        assert f"small ({site.small.uri}): infeasible: " in lines[-1]
        assert f"gone ({site.gone}): unreachable: " in lines[-1]
        # Nothing was submitted anywhere.
        assert not [j for j in site.jobs() if j["state"] != "INACTIVE"]


def test_check_least_pending_prefers_the_idle_target(site):
    with added(site, "small", site.small.uri):
        held = [site.big.submit("--urgency=0", "true") for _ in range(2)]
        try:
            proc = remote(site, "check", "true")
            assert proc.stdout.splitlines()[-1] == "least_pending would choose small (then, if it fails: big)"
            rc, record = check_json(site, "true")
            pending = {c["label"]: c.get("pending") for c in record["candidates"]}
            assert pending["big"] == 2 and pending["small"] == 0
        finally:
            site.big.run("cancel", *held)


def test_check_to_restricts_the_candidates(site):
    with added(site, "small", site.small.uri):
        proc = remote(site, "check", "--to", "small", "true")
        assert proc.stdout.splitlines()[-1] == "the job would go to small"
        rc, record = check_json(site, "--to", "small", "-N2", "true")
        assert rc == 1 and verdicts(record) == {"small": "infeasible"}
        assert record["message"].startswith(f"small ({site.small.uri}) cannot run this job")
        # A URI: the registry's entry of that URI.
        rc, record = check_json(site, "--to", site.small.uri, "true")
        assert rc == 0 and verdicts(record) == {"small": "feasible"}
        # The job's own delegate dependency names the candidates too.
        rc, record = check_json(site, "--dependency=delegate:small", "true")
        assert rc == 0 and verdicts(record) == {"small": "feasible"}
        proc = remote(site, "check", "--to=big", "--dependency=delegate:small", "true", check=False)
        assert proc.returncode == 2 and "name different targets" in proc.stderr
        # Policies.
        rc, record = check_json(site, "--to", "assign:1", "true")
        assert rc == 1 and "out of range" in record["message"]
        rc, record = check_json(site, "--to", "assign:0", "true")
        assert rc == 0 and record["choice"] == "big"
        proc = remote(site, "check", "--to", "random", "true")
        assert proc.stdout.splitlines()[-1].startswith("random chooses at submit")
        proc = remote(site, "check", "--to", "nosuch", "true", check=False)
        assert proc.returncode == 1 and "registry label or policy" in proc.stderr
        proc = remote(site, "check", "--to", site.uri, "true", check=False)
        assert proc.returncode == 1 and "this instance itself" in proc.stderr


def test_check_unreachable_only(site):
    rc, record = check_json(site, "--to", "gone", "true")
    assert rc == 1 and verdicts(record) == {"gone": "unreachable"}
    assert record["message"].startswith(f"cannot connect to {site.gone}: ")
    with silent_sockets(1) as (uri,):
        start = time.time()
        rc, record = check_json(site, "--timeout=1", "--to", uri, "true")
        assert time.time() - start < 4
    assert rc == 1 and record["candidates"][0]["reason"] == "could not connect within 1s"


def test_check_dry_run_shows_what_candidates_are_asked(site):
    out = remote(site, "check", "--dry-run", "-N2", "-t", "5m", "--env=SECRET=1", "hostname", "-f")
    spec = json.loads(out.stdout)
    assert spec["attributes"] == {"system": {"duration": 300.0}}
    assert spec["tasks"][0]["command"] == ["hostname"]  # the command's name only
    assert "SECRET" not in out.stdout


def test_other_schedulers_and_none(request, site):
    """sched-simple is named as such; a target with no scheduler answers no
    feasibility check: 'no' in list, and "unknown" in check, which the
    plugin still tries (exit 0)."""
    other = start_instance(request, name="other-sched")
    other.use_sched_simple()
    with added(site, "other", other.uri):
        row = listing(site)["other"]
        assert (row["scheduler"], row["feasibility"]) == ("sched-simple", True)
        rc, record = check_json(site, "--to", "other", "-N2", "true")
        assert rc == 1 and "unsatisfiable request" in record["candidates"][0]["reason"]
        other.remove_scheduler()
        row = listing(site)["other"]
        assert (row["state"], row["scheduler"], row["feasibility"]) == ("up", "none", False)
        rc, record = check_json(site, "--to", "other", "-N2", "true")
        assert rc == 0 and record["candidates"][0]["verdict"] == "unknown"
        assert record["candidates"][0]["reason"] == "no feasibility service"
        assert record["choice"] == "other"
