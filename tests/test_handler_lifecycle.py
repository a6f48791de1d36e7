"""The handler file: override, reload without a broker restart, failures.

Variants of the handler are site handler files built on the package, as a
site writes them (see delegate_handler.py): they replace one piece and
leave the rest to flux_delegate.
"""

import json
import shutil

import pytest
from flux_instance import HANDLER, PLUGIN, PYTHONPATH

pytestmark = pytest.mark.integration

SITE_HANDLER = """\
from flux_delegate import jobspec
from flux_delegate.jobmanager import entry
from flux_delegate.jobmanager.entry import *


def remote_jobspec(spec, environment=None, origin=None):
{body}


def plugin_load(conf, jobtap):
    entry.plugin_load(conf, jobtap, remote_jobspec=remote_jobspec)
"""


def site_handler(path, body):
    """A site handler file whose remote_jobspec runs body (indented)."""
    path.write_text(SITE_HANDLER.format(body=body))
    return str(path)


def marked(path, marker):
    """A handler that marks every remote job (attributes.system.marker)."""
    return site_handler(
        path,
        "    remote = jobspec.remote_jobspec(spec, environment, origin)\n"
        f"    remote['attributes']['system']['marker'] = {marker!r}\n"
        "    return remote",
    )


def remote_marker(source, target, jobid):
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    spec = json.loads(target.run("job", "info", rid, "jobspec").stdout)
    return spec["attributes"]["system"].get("marker")


def test_handler_override_and_reload(fresh_source, target, tmp_path):
    source = fresh_source
    path = marked(tmp_path / "site_handler.py", "first")
    source.load_plugin(path)
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert remote_marker(source, target, jobid) == "first"
    assert source.status(jobid) == 0

    # Edit the file, remove + load: the new code runs, no broker restart.
    marked(tmp_path / "site_handler.py", "second")
    source.remove_plugin()
    source.load_plugin(path)
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert remote_marker(source, target, jobid) == "second"
    assert source.status(jobid) == 0
    assert "delegate: handler " + path + " loaded" in source.dmesg()


def test_reload_runs_the_edited_package(fresh_source, target, tmp_path):
    """remove + load reads the package's files again: an edit to a module
    of flux_delegate runs, not the copy an earlier load left in
    sys.modules."""
    package = tmp_path / "python"
    shutil.copytree(PYTHONPATH, package, ignore=shutil.ignore_patterns("__pycache__"))
    module = package / "flux_delegate" / "jobspec.py"
    original = module.read_text()
    returned = "    return spec\n"
    assert original.count(returned) == 1, "jobspec.remote_jobspec changed: update this test"

    def edit(marker):
        module.write_text(
            original.replace(
                returned, f"    spec['attributes']['system']['marker'] = {marker!r}\n" + returned
            )
        )

    edit("first")
    fresh_source.load_plugin(None, f"pythonpath={package}")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert remote_marker(fresh_source, target, jobid) == "first"
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    assert query["pythonpath"] == str(package)

    edit("second")
    fresh_source.remove_plugin()
    fresh_source.load_plugin(None, f"pythonpath={package}")
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert remote_marker(fresh_source, target, jobid) == "second"
    assert fresh_source.status(jobid) == 0


def test_query_names_the_handler(fresh_source):
    fresh_source.load_plugin()
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    assert query["handler"] == HANDLER
    # The source tree's package, never a copy installed earlier.
    assert query["pythonpath"] == PYTHONPATH
    assert query["handler_error"] is None
    assert query["jobs"] == {}


def test_watchers_do_not_pile_up(fresh_source, target):
    """Each job sets timers (submit, watch, preflight): once its jobs are
    done the handler holds no more watchers than before them."""
    fresh_source.load_plugin()
    query = lambda: json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    warm = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(warm) == 0
    before = query()["watchers"]
    jobs = [fresh_source.submit(f"--dependency=delegate:{target.uri}", "true") for _ in range(20)]
    for jobid in jobs:
        assert fresh_source.status(jobid) == 0
    after = query()
    assert after["jobs"] == {} and after["watchers"] <= before, (before, after)


def test_job_in_flight_survives_remove_and_load(fresh_source, target):
    source = fresh_source
    source.load_plugin()
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "sh", "-c", "sleep 2; exit 7")
    rid = str(source.wait_event(jobid, "delegated")["context"]["jobid"])
    source.wait_event(jobid, "prolog-start")  # running, as its remote job is

    source.remove_plugin()
    # The remote job ends while no handler follows it; the local job stays
    # running, held by our prolog: nothing is lost.
    target.wait_event(rid, "clean", timeout=30)
    state = source.run("jobs", "-n", "-o", "{state}", jobid).stdout.strip()
    assert state == "RUN"

    source.load_plugin()
    assert source.status(jobid) == 7
    assert f"{jobid}: following" in source.dmesg() and " again" in source.dmesg()


def test_broken_handler_is_reported_and_does_not_hurt_the_broker(fresh_source, target, tmp_path):
    source = fresh_source
    broken = tmp_path / "broken_handler.py"
    broken.write_text("def callback(:\n")
    source.load_plugin(str(broken))

    proc = source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert proc.returncode != 0
    # The reason first (flux keeps 160 bytes of a rejection); the path in
    # the broker log and 'flux jobtap query'.
    assert "delegate: SyntaxError: invalid syntax (broken_handler.py, line 1)" in proc.stderr
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    assert query["handler"] == str(broken) and "SyntaxError" in query["handler_error"]
    dmesg = source.dmesg()
    assert f"handler {broken} failed to import: SyntaxError" in dmesg
    assert "Traceback" in dmesg
    # Plain jobs are not affected.
    assert source.status(source.submit("true")) == 0

    # Fix it and reload: delegation works.
    source.remove_plugin()
    source.load_plugin()
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert source.status(jobid) == 0


def test_bad_plugin_option_is_named_and_jobs_are_rejected(fresh_source, target, tmp_path):
    """A typo in an option would silently keep a default: it is refused,
    clearly, and the broker goes on (plain jobs run).  The reason comes
    first, whatever the length of the handler's path."""
    source = fresh_source
    deep = tmp_path.joinpath(*(["a-rather-long-directory-name"] * 8))
    deep.mkdir(parents=True)
    handler = deep / "delegate_handler.py"
    handler.write_text(open(HANDLER).read())
    source.load_plugin(str(handler), "submit-timout=5")
    proc = source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert "unknown plugin option 'submit-timout'" in proc.stderr
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    assert "unknown plugin option 'submit-timout'" in query["handler_error"]
    assert source.status(source.submit("true")) == 0

    source.remove_plugin()
    source.load_plugin(None, "submit-timeout=-1")
    proc = source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert "plugin option submit-timeout=-1: must be more than 0 seconds" in proc.stderr

    # Durations are read as flux reads them (Flux Standard Duration).
    source.remove_plugin()
    source.load_plugin(None, "submit-timeout=1m", "reconnect-interval=500ms")
    query = json.loads(source.run("jobtap", "query", "delegate.so").stdout)
    assert query["handler_error"] is None
    assert source.status(source.submit(f"--dependency=delegate:{target.uri}", "true")) == 0


def test_missing_handler_file(fresh_source, target):
    source = fresh_source
    source.load_plugin("/nonexistent/delegate_handler.py")
    proc = source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert (
        "delegate: FileNotFoundError: [Errno 2] No such file or directory:"
        " '/nonexistent/delegate_handler.py'" in proc.stderr
    )


def test_handler_error_in_callback_rejects_with_traceback(fresh_source, target, tmp_path):
    source = fresh_source
    path = tmp_path / "raising.py"
    path.write_text(
        "from flux_delegate.jobmanager import entry\n"
        "from flux_delegate.jobmanager.entry import *\n"
        "def callback(topic, args, job):\n"
        "    if topic == 'job.dependency.delegate':\n"
        "        raise RuntimeError('boom in callback')\n"
        "    return entry.callback(topic, args, job)\n"
    )
    path = str(path)
    source.load_plugin(path)
    proc = source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert "handler error (traceback in broker log): RuntimeError: boom in callback" in proc.stderr
    dmesg = source.dmesg()
    assert "Traceback" in dmesg and "raise RuntimeError('boom in callback')" in dmesg


@pytest.mark.parametrize(
    "raised, shown",
    [
        ("b'\\xff'.decode()", "handler error (traceback in broker log): UnicodeDecodeError: "),
        ("json.loads('{')", "handler error (traceback in broker log): JSONDecodeError: "),
        ("raise ValueError('no such %n cluster')", "no such %n cluster"),
    ],
)
def test_only_a_plain_value_error_at_submit_is_the_users(fresh_source, target, tmp_path, raised, shown):
    """At submit a ValueError is a rejection for the user, as is; a
    UnicodeError or a JSONDecodeError (ValueErrors too) is a decoding bug
    of the handler's or what a target sent: a handler error, its
    traceback in the broker log."""
    path = tmp_path / "decoding.py"
    path.write_text(
        "import json\n"
        "from flux_delegate.jobmanager import entry\n"
        "from flux_delegate.jobmanager.entry import *\n"
        "def callback(topic, args, job):\n"
        "    if topic == 'job.dependency.delegate':\n"
        f"        {raised}\n"
        "    return entry.callback(topic, args, job)\n"
    )
    fresh_source.load_plugin(str(path))
    proc = fresh_source.run("submit", f"--dependency=delegate:{target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert shown in proc.stderr, proc.stderr
    traceback_logged = "Traceback" in fresh_source.dmesg()
    assert traceback_logged == shown.startswith("handler error"), fresh_source.dmesg()


def raising_in(tmp_path, topic):
    """A site handler whose callback raises for one topic."""
    path = tmp_path / "raising.py"
    path.write_text(
        "from flux_delegate.jobmanager import entry\n"
        "from flux_delegate.jobmanager.entry import *\n"
        "def callback(topic, args, job):\n"
        f"    if topic == {topic!r}:\n"
        "        raise RuntimeError('boom in %n ' + topic)\n"
        "    return entry.callback(topic, args, job)\n"
    )
    return str(path)


def test_handler_error_on_system_delegate_rejects_the_job(fresh_source, target, tmp_path):
    """-S system.delegate=TARGET enters the handler at job.create: an error
    there rejects the submit.  (In job.new, where it used to be, flux
    ignores the result and the job ran here, on the source.)"""
    fresh_source.load_plugin(raising_in(tmp_path, "job.create"))
    proc = fresh_source.run("submit", "-S", f"system.delegate={target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert "handler error (traceback in broker log): RuntimeError: boom in %n job.create" in (
        proc.stderr
    )
    listed = fresh_source.run("jobs", "-a", "-n", "-o", "{id}").stdout.split()
    assert listed == [], "a rejected job must not exist, let alone run here"
    # Jobs without system.delegate never enter Python at job.create.
    assert fresh_source.status(fresh_source.submit("true")) == 0


def test_bad_system_delegate_is_rejected_at_submit(source, target):
    proc = source.run("submit", "-S", "system.delegate=nowhere%n", "true", check=False)
    assert proc.returncode != 0
    assert "delegate: not a URI, job id, registry label or policy: 'nowhere%n'" in proc.stderr
    proc = source.run("submit", "-S", "system.delegate=[1]", "true", check=False)
    assert proc.returncode != 0
    assert "delegate: system.delegate must be a string, not" in proc.stderr


def test_an_old_load_cannot_act_through_the_next(fresh_source, target, tmp_path):
    """Each load has its own jobtap object, invalidated when the load ends:
    whatever of an old load still runs (a late answer, a site's own timer)
    gets an error instead of acting through the load that replaced it."""
    path = tmp_path / "keeping.py"
    path.write_text(
        "import sys\n"
        "import syslog\n"
        "from flux_delegate.jobmanager import entry\n"
        "from flux_delegate.jobmanager.entry import *\n"
        "def plugin_load(conf, jobtap):\n"
        "    conf = dict(conf)\n"
        "    jobid = int(conf.pop('job', 0))\n"
        "    entry.plugin_load(conf, jobtap)\n"
        "    old = getattr(sys, 'delegate_test_jobtap', None)\n"
        "    sys.delegate_test_jobtap = jobtap  # outlives this load's modules\n"
        "    if old is None:\n"
        "        return\n"
        "    for name, which in (('old', old), ('new', jobtap)):\n"
        "        try:\n"
        "            which.post_event(jobid, name + '-load-event')\n"
        "            what = 'acted'\n"
        "        except RuntimeError as exc:\n"
        "            what = f'refused: {exc}'\n"
        "        log = entry.current.runtime.handle.log\n"
        "        log(syslog.LOG_INFO, f'{name} load jobtap {what}')\n"
    )
    fresh_source.load_plugin(str(path))
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "sleep", "3")
    fresh_source.wait_event(jobid, "delegated")
    decimal = fresh_source.run("job", "id", "--to=dec", jobid).stdout.strip()
    fresh_source.remove_plugin()
    fresh_source.load_plugin(str(path), f"job={decimal}")
    dmesg = fresh_source.dmesg()
    assert "old load jobtap refused: this load of delegate.so is over" in dmesg
    assert "new load jobtap acted" in dmesg
    events = [e["name"] for e in fresh_source.eventlog(jobid)]
    assert "new-load-event" in events and "old-load-event" not in events
    assert fresh_source.status(jobid) == 0


@pytest.mark.parametrize(
    "raised, named",
    [
        ("RuntimeError('boom in continuation')", "RuntimeError: boom in continuation"),
        # Not an Exception: the bindings would only print it to the broker's
        # stderr, and the job would wait for ever.
        ("SystemExit(3)", "SystemExit: 3"),
        ("KeyboardInterrupt()", "KeyboardInterrupt"),
    ],
)
def test_handler_error_in_continuation_fails_only_that_job(fresh_source, target, tmp_path, raised, named):
    source = fresh_source
    path = site_handler(tmp_path / "raising.py", f"    raise {raised}")
    source.load_plugin(path)
    jobid = source.submit(f"--dependency=delegate:{target.uri}", "true")
    source.wait_event(jobid, "clean")
    exc = source.exception(jobid)
    assert exc["type"] == "DelegationFailure"
    assert named in exc["note"]
    assert "on_J" in exc["note"]
    assert "Traceback" in source.dmesg()
    # The job-manager's reactor kept running: plain jobs still run.
    assert source.status(source.submit("true")) == 0


def test_second_load_is_refused_and_the_first_keeps_working(fresh_source, target):
    fresh_source.load_plugin()
    again = fresh_source.run("jobtap", "load", PLUGIN, check=False)
    assert again.returncode != 0
    assert "delegate.so is already loaded" in fresh_source.dmesg()
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0


def test_rejected_submit_leaves_nothing_behind(fresh_source, target):
    import json

    fresh_source.load_plugin()
    proc = fresh_source.run(
        "submit",
        f"--dependency=delegate:{target.uri}",
        "--dependency=afterok:ƒ2222222",
        "true",
        check=False,
    )
    assert proc.returncode != 0
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    assert query["jobs"] == {}


def test_a_failed_handler_rejects_system_delegate_jobs_too(fresh_source, target, tmp_path):
    """-S system.delegate=TARGET asks for delegation as --dependency does:
    with no handler to do it, the submit is refused, never run here."""
    broken = tmp_path / "broken_handler.py"
    broken.write_text("import no_such_module_here\n")
    fresh_source.load_plugin(str(broken))
    proc = fresh_source.run("submit", "-S", f"system.delegate={target.uri}", "true", check=False)
    assert proc.returncode != 0
    assert "delegate: ModuleNotFoundError: No module named 'no_such_module_here'" in proc.stderr
    assert fresh_source.run("jobs", "-a", "-n", "-o", "{id}").stdout.split() == []
    assert fresh_source.status(fresh_source.submit("true")) == 0


#: A handler whose declaration is wrong; its plugin_load leaves a mark.
BAD_DECLARATION = """\
from flux_delegate.jobmanager import entry
from flux_delegate.jobmanager.entry import *

JOB_CREATE_ATTRIBUTES = {value}


def plugin_load(conf, jobtap):
    open({mark!r}, "w").close()
    entry.plugin_load(conf, jobtap)
"""


@pytest.mark.parametrize(
    "value, reason",
    [
        ('("system.delegate")', "not a single str (a missing comma?)"),
        ('("system.delegate", "")', "'' is not a name or dotted path"),
        ('("system..delegate",)', "'system..delegate' is not a name or dotted path"),
    ],
)
def test_a_bad_declaration_is_refused_before_plugin_load(fresh_source, tmp_path, value, reason):
    """A str where a tuple is meant (its letters would be the attributes)
    or an empty path (matching every job) is refused at load, before
    plugin_load: nothing is started that no plugin_unload would stop, and
    plain jobs never enter Python."""
    mark = tmp_path / "plugin_load_ran"
    handler = tmp_path / "declaring.py"
    handler.write_text(BAD_DECLARATION.format(value=value, mark=str(mark)))
    fresh_source.load_plugin(str(handler))
    query = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)
    assert reason in query["handler_error"], query["handler_error"]
    assert not mark.exists()
    assert fresh_source.status(fresh_source.submit("true")) == 0


#: A handler that tells 'flux jobtap query' its interpreter's sys.path.
PATH_TELLING = """\
import sys
from flux_delegate.jobmanager import entry
from flux_delegate.jobmanager.entry import *


def callback(topic, args, job):
    if topic == "plugin.query":
        return {"sys_path": list(sys.path)}
    return entry.callback(topic, args, job)
"""


def test_unload_leaves_a_directory_that_was_on_sys_path_before(fresh_source, tmp_path):
    """pythonpath= naming a directory Python already had (flux's own, the
    installed default): the unload takes off only the entry the load put
    first, not flux's."""
    import flux

    flux_dir = str(__import__("pathlib").Path(flux.__file__).parent.parent)
    handler = tmp_path / "telling.py"
    handler.write_text(PATH_TELLING)
    fresh_source.load_plugin(str(handler))
    before = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)["sys_path"]
    assert flux_dir in before[1:]
    fresh_source.remove_plugin()
    # The package (and flux's) found there too: a copy of the tree's.
    fresh_source.load_plugin(str(handler), f"pythonpath={flux_dir}")
    fresh_source.remove_plugin()
    fresh_source.load_plugin(str(handler))
    after = json.loads(fresh_source.run("jobtap", "query", "delegate.so").stdout)["sys_path"]
    assert after == before


def test_a_handler_error_in_job_new_leaves_the_job_to_go_on_at_depend(fresh_source, target, tmp_path):
    """A NEW job cannot take an exception (its eventlog is not committed
    yet): the error is logged with its traceback, no exception is tried,
    and the job is delegated from DEPEND as any job with other
    dependencies is."""
    fresh_source.load_plugin(raising_in(tmp_path, "job.new"))
    jobid = fresh_source.submit(f"--dependency=delegate:{target.uri}", "true")
    assert fresh_source.status(jobid) == 0
    dmesg = fresh_source.dmesg()
    assert "RuntimeError: boom in %n job.new" in dmesg
    assert "raising exception" not in dmesg
