"""Unit tests of flux_delegate.jobspec: the remote copy of a job and its origin."""

from unit import needs_flux

from flux_delegate import jobspec as jobspec_module
from flux_delegate.jobspec import (
    MAX_R_IDS,
    R_naming,
    idset_count,
    idset_text,
    job_name,
    local_R,
    lookup,
    max_named_nodes,
    origin_of,
    release_updates,
    released_status,
    remote_jobspec,
    requeue_allowed,
    same_origin,
    with_output_batch_timeout,
)
from flux_delegate.preflight import feasibility_jobspec


def test_remote_jobspec_drops_local_attributes_and_restores_environment():
    jobspec = {
        "version": 1,
        "resources": [{"type": "slot", "count": 2}],
        "tasks": [{"command": ["true"]}],
        "attributes": {
            "system": {
                "duration": 60,
                "cwd": "/tmp",
                "dependencies": [{"scheme": "delegate", "value": "x"}],
                "delegate": "random",
                "job": {"name": "n"},
            },
            "user": {"a": 1},
        },
    }
    spec = remote_jobspec(jobspec, {"PATH": "/bin"})
    system = spec["attributes"]["system"]
    assert "dependencies" not in system and "delegate" not in system
    assert system["environment"] == {"PATH": "/bin"}
    assert system["duration"] == 60 and system["cwd"] == "/tmp"
    assert spec["attributes"]["user"] == {"a": 1}
    assert spec["resources"] == jobspec["resources"]
    # The local jobspec is left as it was.
    assert "dependencies" in jobspec["attributes"]["system"]
    assert "environment" not in jobspec["attributes"]["system"]


def test_remote_jobspec_of_a_jobspec_without_system_attributes():
    for jobspec in ({"version": 1}, {"version": 1, "attributes": {"user": {"a": 1}}}):
        spec = remote_jobspec(jobspec, {"PATH": "/bin"}, {"jobid": 5})
        assert spec["attributes"]["system"] == {
            "environment": {"PATH": "/bin"},
            "delegate-origin": {"jobid": 5},
        }
        assert "system" not in jobspec.get("attributes", {})  # left as it was


def test_remote_jobspec_records_its_origin_and_drops_an_inherited_one():
    jobspec = {"version": 1, "attributes": {"system": {"delegate-origin": {"jobid": 9}}}}
    assert "delegate-origin" not in remote_jobspec(jobspec)["attributes"]["system"]
    origin = {"jobid": 5, "t_submit": 1.5, "host": "h"}
    spec = remote_jobspec(jobspec, None, origin)
    assert origin_of(spec) == origin
    assert origin_of({"version": 1}) is None
    assert origin_of({"attributes": {"system": {"delegate-origin": "x"}}}) is None


def test_same_origin_needs_the_id_and_the_submit_time():
    a = {"jobid": 5, "t_submit": 100.25, "host": "h"}
    assert same_origin(a, {"jobid": 5, "t_submit": 100.25})
    assert not same_origin(a, {"jobid": 5, "t_submit": 101.25})  # another instance
    assert not same_origin(a, {"jobid": 6, "t_submit": 100.25})
    assert not same_origin(a, None)
    assert not same_origin(a, {"jobid": "x", "t_submit": 100.25})


def test_job_name_as_job_list_shows_it():
    assert job_name({"tasks": [{"command": ["/bin/sleep", "1"]}]}) == "sleep"
    named = {
        "tasks": [{"command": ["/bin/sleep"]}],
        "attributes": {"system": {"job": {"name": "mine"}}},
    }
    assert job_name(named) == "mine"
    assert job_name({"version": 1}) is None


def test_remote_jobspec_without_attributes():
    spec = remote_jobspec({"version": 1}, None)
    assert spec["attributes"]["system"] == {}


def test_release_updates_report_the_wait_status():
    updates = release_updates(768)
    test = updates["attributes.system.exec.test"]
    assert test["wait_status"] == 768
    # Run by the plugin (localrun.py); should job-exec ever start it, no
    # process runs and it finishes at once, at a restart too.  (A zero
    # duration would make job-exec wait for ever.)
    assert "override" not in test and test["reattach_finish"] == 1
    assert test["run_duration"] != "0" and float(test["run_duration"].rstrip("s")) > 0
    # A plugin loaded again knows the job for one of its own.
    spec = {"attributes": {"system": {"delegate-release": updates["attributes.system.delegate-release"]}}}
    assert released_status(spec) == 768
    assert released_status({"attributes": {"system": {}}}) is None
    for odd in ({"wait_status": "768"}, {"wait_status": True}, [768], "768"):
        assert released_status({"attributes": {"system": {"delegate-release": odd}}}) is None
    # It is never sent to a target.
    assert "delegate-release" not in remote_jobspec(spec)["attributes"]["system"]


def test_idset_text():
    assert idset_text([0, 1, 2, 3, 7]) == "0-3,7"
    assert idset_text([5]) == "5"
    assert idset_text([0, 2, 4, 5]) == "0,2,4-5"


def test_idset_count_counts_without_expanding():
    assert idset_count("0") == 1
    assert idset_count("0-3,7") == 5
    assert idset_count("[2-5]") == 4
    assert idset_count("0-4294967295") is None  # more than the most
    assert idset_count(f"0-{MAX_R_IDS - 1}") == MAX_R_IDS
    for bad in ("", "a", "3-1", "1-", "-1", "1,,2", None, 3, "１"):
        assert idset_count(bad) is None


def remote_R(**execution):
    base = {
        "R_lite": [{"rank": "3-4", "children": {"core": "0-3", "gpu": "0"}}],
        "nodelist": ["nodeA", "nodeB"],
        "starttime": 1.0,
        "expiration": 2.0,
    }
    base.update(execution)
    return {"version": 1, "execution": base, "scheduling": {"graph": "..."}}


def test_R_naming_takes_the_remote_nodes_on_ranks_from_0():
    R = R_naming(remote_R(), now=100.0)
    assert R == {
        "version": 1,
        "execution": {
            "R_lite": [{"rank": "0-1", "children": {"core": "0-3", "gpu": "0"}}],
            "nodelist": ["nodeA", "nodeB"],
            "starttime": 100.0,
            "expiration": 0.0,
        },
    }
    # The remote ranks' order is kept, with what each node had.
    R = R_naming(
        remote_R(
            R_lite=[
                {"rank": "9,12", "children": {"core": "0"}},
                {"rank": "10", "children": {"core": "0-7"}},
            ],
            nodelist=["n9", "n10", "n12"],
        )
    )
    assert R["execution"]["R_lite"] == [
        {"rank": "0,2", "children": {"core": "0"}},
        {"rank": "1", "children": {"core": "0-7"}},
    ]
    assert R["execution"]["nodelist"] == ["n9", "n10", "n12"]
    assert R_naming(remote_R(), count=lambda R: (2, 2)) is not None
    assert R_naming(remote_R(), count=lambda R: (1, 2)) is None  # a node without name
    assert R_naming(remote_R(), count=lambda R: 1 / 0) is None


def test_R_naming_names_at_most_max_nodes():
    assert R_naming(remote_R(), max_nodes=1) is None
    one = remote_R(R_lite=[{"rank": "7", "children": {"core": "3"}}], nodelist=["far"])
    R = R_naming(one, max_nodes=1)
    assert R["execution"]["R_lite"] == [{"rank": "0", "children": {"core": "3"}}]
    assert R["execution"]["nodelist"] == ["far"]


def test_max_named_nodes_follows_a_per_rank_prolog_or_epilog():
    assert max_named_nodes({}) is None
    assert max_named_nodes({"job-manager": {"prolog": {"command": ["x"]}}}) is None
    assert max_named_nodes({"job-manager": {"prolog": {"per-rank": True}}}) == 1
    assert max_named_nodes({"job-manager": {"epilog": {"per-rank": True}}}) == 1
    assert max_named_nodes({"job-manager": "odd"}) is None
    assert max_named_nodes(None) is None


def test_R_naming_refuses_what_is_not_an_R_naming_nodes():
    for bad in (
        None,
        "R",
        {"version": 2, "execution": remote_R()["execution"]},
        {"version": 1},
        remote_R(R_lite=[]),
        remote_R(R_lite="0"),
        remote_R(R_lite=[{"rank": 0, "children": {}}]),
        remote_R(R_lite=[{"rank": "0-4294967295", "children": {"core": "0"}}]),
        remote_R(R_lite=[{"rank": "0", "children": {"core": "0-4294967295"}}]),
        remote_R(R_lite=[{"rank": "0", "children": {"core": 0}}]),
        remote_R(
            R_lite=[{"rank": "0-1", "children": {}}, {"rank": "1", "children": {}}]
        ),  # rank 1 twice
        remote_R(nodelist=[]),
        remote_R(nodelist="nodeA"),
        remote_R(nodelist=["node\0A"]),
        remote_R(nodelist=[""]),
    ):
        assert R_naming(bad) is None, bad


@needs_flux
def test_R_naming_counts_as_flux_does():
    from flux.resource import ResourceSet
    from flux_delegate.jobspec import flux_counts

    R = R_naming(remote_R(nodelist=["node[1-2]"]), count=flux_counts)
    assert ResourceSet(R).nodelist.expand() == ["node1", "node2"]
    assert str(ResourceSet(R).ranks) == "0-1" and ResourceSet(R).ncores == 8
    assert R_naming(remote_R(nodelist=["node[1-3]"]), count=flux_counts) is None
    assert R_naming(remote_R(nodelist=["node1"]), count=flux_counts) is None


@needs_flux
def test_local_R_is_valid_R():
    from flux.resource import ResourceSet

    R = local_R("node0", now=100.0)
    rset = ResourceSet(R)
    assert str(rset.ranks) == "0"
    assert rset.nodelist.expand() == ["node0"]
    assert R["execution"]["starttime"] == 100.0


def test_lookup_takes_a_jobspec_of_any_shape():
    spec = {"attributes": {"system": {"job": {"name": "n"}, "queue": None}}}
    assert lookup(spec, "attributes.system.job.name") == "n"
    assert lookup(spec, "attributes.system.queue", "batch") is None  # there, as null
    assert lookup(spec, "attributes.system.duration", 0) == 0
    assert lookup({}, "attributes.system.job.name", "x") == "x"
    # A level that is not a table (a target's jobspec can be any JSON).
    for odd in ("text", ["a"], None, 3):
        assert lookup({"attributes": {"system": odd}}, "attributes.system.job.name", "d") == "d"
        assert lookup({"attributes": odd}, "attributes.system", "d") == "d"
    assert lookup(None, "attributes.system", "d") == "d"
    assert origin_of({"attributes": ["x"]}) is None
    assert requeue_allowed({"attributes": {"system": "x"}})
    assert not requeue_allowed({"attributes": {"system": {"delegate-requeue": "false"}}})
    assert job_name({"attributes": {"system": {"job": "x"}}, "tasks": [{"command": ["a/b"]}]}) == "b"


@needs_flux
def test_dotted_paths_are_flux_utils():
    import flux.util

    assert jobspec_module.get_treedict is flux.util.get_treedict
    assert jobspec_module.set_treedict is flux.util.set_treedict


def test_feasibility_jobspec_keeps_what_schedulers_decide_with():
    jobspec = {
        "version": 1,
        "resources": [{"type": "slot", "count": 2}],
        "tasks": [{"command": ["sleep", "60"], "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {
            "system": {"duration": 60, "queue": "q", "environment": {"A": "1"}, "files": {}},
            "user": {"big": "x" * 100},
        },
    }
    spec = feasibility_jobspec(jobspec)
    assert spec["attributes"] == {"system": {"duration": 60, "queue": "q"}}
    assert spec["tasks"] == [{"command": ["sleep"], "slot": "task", "count": {"per_slot": 1}}]
    assert spec["resources"] == jobspec["resources"] and spec["version"] == 1
    assert jobspec["tasks"][0]["command"] == ["sleep", "60"]  # the job's own is left as it was
    assert feasibility_jobspec({"version": 1})["attributes"] == {"system": {}}
    assert feasibility_jobspec({"version": 1, "attributes": None})["attributes"] == {"system": {}}


def test_with_output_batch_timeout_sets_it_on_copies_unless_the_job_has_its_own():
    local = {"attributes": {"system": {"shell": {"options": {"rlimit": {"nofile": 8}}}}}}
    remote = with_output_batch_timeout(local, 0.1)
    assert remote["attributes"]["system"]["shell"]["options"] == {
        "rlimit": {"nofile": 8},
        "output": {"batch-timeout": 0.1},
    }
    # The local jobspec is as it was (its tables are copied, not changed).
    assert local == {"attributes": {"system": {"shell": {"options": {"rlimit": {"nofile": 8}}}}}}
    own = {"attributes": {"system": {"shell": {"options": {"output": {"batch-timeout": 2}}}}}}
    assert with_output_batch_timeout(own, 0.1) is own
    redirected = {"attributes": {"system": {"shell": {"options": {"output": {"stdout": {"type": "file"}}}}}}}
    assert with_output_batch_timeout(redirected, 0.1)["attributes"]["system"]["shell"]["options"][
        "output"
    ] == {"stdout": {"type": "file"}, "batch-timeout": 0.1}
    assert with_output_batch_timeout({"attributes": {"system": {}}}, 0.5) == {
        "attributes": {"system": {"shell": {"options": {"output": {"batch-timeout": 0.5}}}}}
    }
    odd = {"attributes": {"system": {"shell": "not a table"}}}
    assert with_output_batch_timeout(odd, 0.1) is odd
