"""Unit tests of the handler's pure decision logic (no broker needed)."""

import importlib.util
import os

import pytest

HANDLER_PATH = os.environ.get("DELEGATE_HANDLER") or os.path.join(
    os.path.dirname(__file__), "..", "delegate_handler.py"
)


def import_handler():
    spec = importlib.util.spec_from_file_location("delegate_handler", HANDLER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


handler = import_handler()
needs_flux = pytest.mark.skipif(
    handler.flux is None, reason="needs flux-core's Python bindings (flux-core is not installed)"
)


@pytest.mark.parametrize("value", [None, ""])
def test_empty_value_needs_a_registry(value):
    with pytest.raises(ValueError, match="no delegation targets are configured"):
        handler.parse_target(value)


def test_non_string_value_is_rejected():
    with pytest.raises(ValueError, match="the target must be a string, not"):
        handler.parse_target(5)


@pytest.mark.parametrize("value", ["local:///tmp/a b", "ssh://host/\tx", "a\nb", "   ", "\u00a0"])
def test_white_space_is_rejected(value):
    with pytest.raises(ValueError, match="white space or control characters"):
        handler.parse_target(value)


@pytest.mark.parametrize(
    "value, kind, scheme",
    [
        ("local:///tmp/flux-x/local-0", "uri", "local"),
        ("ssh://host/tmp/flux-x/local-0", "uri", "ssh"),
        ("foo://bar", "scheme", "foo"),
        ("slurm:1234", "scheme", "slurm"),
        ("jobid:ƒ2222222", "jobid", "jobid"),
    ],
)
def test_target_kinds(value, kind, scheme):
    target = handler.parse_target(value)
    assert (target.kind, target.scheme, target.value) == (kind, scheme, value)


@pytest.mark.parametrize("value", ["SSH://host/tmp/x", "Local:///tmp/x", "local:/tmp/x"])
def test_schemes_are_taken_as_flux_connectors_take_them(value):
    """flux's connectors are found by the scheme as written."""
    with pytest.raises(ValueError, match="not a local:// or ssh:// URI"):
        handler.parse_target(value)


@pytest.mark.parametrize(
    "value, shown",
    [
        ("abc", "'abc'"),
        ("a\nb", "'a\\nb'"),
        ("é" * 600, "'" + "é" * 30 + "...(600 characters)'"),
        ("x" * 41, "'" + "x" * 40 + "...(41 characters)'"),
        (5, "'5'"),
        ({"a": 1}, "'{\"a\": 1}'"),
    ],
)
def test_values_are_shown_short(value, shown):
    assert handler.shown(value) == shown
    assert len(handler.shown(value).encode()) <= 84


@needs_flux
def test_bare_job_ids():
    target = handler.parse_target("ƒ2222222")
    assert target.kind == "jobid"
    assert [int(j) for j in target.jobids] == [int(handler.JobID("ƒ2222222"))]
    nested = handler.parse_target("ƒ2222222/1234")
    assert [int(j) for j in nested.jobids] == [int(handler.JobID("ƒ2222222")), 1234]


@needs_flux
def test_bare_word_is_not_a_target():
    with pytest.raises(ValueError, match="not a URI, job id, registry label or policy"):
        handler.parse_target("cluster-a")


@needs_flux
@pytest.mark.parametrize(
    "value, error",
    [
        ("local://", "names no socket path"),
        ("local:///", "names no socket path"),
        ("ssh:///tmp/x", "names no host"),
        ("ssh://host", "names no socket path"),
    ],
)
def test_unusable_uris(value, error):
    with pytest.raises(ValueError, match=error):
        handler.check_local_or_ssh(value)


@needs_flux
def test_usable_uris():
    for uri in ("local:///tmp/x/local-0", "ssh://h/tmp/x/local-0"):
        assert handler.check_local_or_ssh(uri) == uri


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
    spec = handler.remote_jobspec(jobspec, {"PATH": "/bin"})
    system = spec["attributes"]["system"]
    assert "dependencies" not in system and "delegate" not in system
    assert system["environment"] == {"PATH": "/bin"}
    assert system["duration"] == 60 and system["cwd"] == "/tmp"
    assert spec["attributes"]["user"] == {"a": 1}
    assert spec["resources"] == jobspec["resources"]
    # The local jobspec is left as it was.
    assert "dependencies" in jobspec["attributes"]["system"]
    assert "environment" not in jobspec["attributes"]["system"]


def test_remote_jobspec_records_its_origin_and_drops_an_inherited_one():
    jobspec = {"version": 1, "attributes": {"system": {"delegate-origin": {"jobid": 9}}}}
    assert "delegate-origin" not in handler.remote_jobspec(jobspec)["attributes"]["system"]
    origin = {"jobid": 5, "t_submit": 1.5, "host": "h"}
    spec = handler.remote_jobspec(jobspec, None, origin)
    assert handler.origin_of(spec) == origin
    assert handler.origin_of({"version": 1}) is None
    assert handler.origin_of({"attributes": {"system": {"delegate-origin": "x"}}}) is None


def test_same_origin_needs_the_id_and_the_submit_time():
    a = {"jobid": 5, "t_submit": 100.25, "host": "h"}
    assert handler.same_origin(a, {"jobid": 5, "t_submit": 100.25})
    assert not handler.same_origin(a, {"jobid": 5, "t_submit": 101.25})  # another instance
    assert not handler.same_origin(a, {"jobid": 6, "t_submit": 100.25})
    assert not handler.same_origin(a, None)
    assert not handler.same_origin(a, {"jobid": "x", "t_submit": 100.25})


def test_job_name_as_job_list_shows_it():
    assert handler.job_name({"tasks": [{"command": ["/bin/sleep", "1"]}]}) == "sleep"
    named = {
        "tasks": [{"command": ["/bin/sleep"]}],
        "attributes": {"system": {"job": {"name": "mine"}}},
    }
    assert handler.job_name(named) == "mine"
    assert handler.job_name({"version": 1}) is None


def test_interrupted_submit_is_the_last_attempt_without_an_answer():
    a = {"uri": "local:///a", "verdict": "feasible", "label": "a"}
    b = {"uri": "local:///b", "verdict": "unknown"}
    choice = {"timestamp": 10.0, "name": "delegate-choice",
              "context": {"candidates": [a, b], "order": ["a", "local:///b"], "choice": "a"}}
    assert handler.interrupted_submit([event("submit")]) is None
    log = [event("submit"), choice]
    assert handler.interrupted_submit(log) == {"uri": "local:///a", "label": "a", "timestamp": 10.0}
    log.append({"timestamp": 12.0, "name": "delegate-failover",
                "context": {"uri": "local:///a", "reason": "r", "next": "local:///b"}})
    assert handler.interrupted_submit(log) == {"uri": "local:///b", "label": None, "timestamp": 12.0}
    log.append(event("delegated", jobid=3, uri="local:///b"))
    assert handler.interrupted_submit(log) is None
    # No target chosen (all infeasible): nothing was sent.
    none = {"timestamp": 1.0, "name": "delegate-choice",
            "context": {"candidates": [a], "order": [], "choice": None}}
    assert handler.interrupted_submit([none]) is None


def test_remote_jobspec_without_attributes():
    spec = handler.remote_jobspec({"version": 1}, None)
    assert spec["attributes"]["system"] == {}


def event(name, **context):
    return {"timestamp": 0.0, "name": name, "context": context}


def test_outstanding_dependencies():
    eventlog = [
        event("submit"),
        event("dependency-add", description="after-success=ƒA"),
        event("dependency-add", description="delegated"),
        event("validate"),
    ]
    assert handler.outstanding_dependencies(eventlog) == {"after-success=ƒA", "delegated"}
    eventlog.append(event("dependency-remove", description="after-success=ƒA"))
    assert handler.outstanding_dependencies(eventlog) == {"delegated"}
    eventlog.append(event("dependency-remove", description="delegated"))
    assert handler.outstanding_dependencies(eventlog) == set()


def test_find_delegation():
    assert handler.find_delegation([event("submit")]) is None
    log = [event("submit"), event("delegated", jobid=42, uri="local:///x")]
    assert handler.find_delegation(log) == {"jobid": 42, "uri": "local:///x"}


def test_remote_outcome_first_fatal_exception_wins():
    outcome = handler.RemoteOutcome()
    outcome.update("exception", {"type": "warn", "severity": 3, "note": "x"})
    assert outcome.exception is None
    outcome.update("exception", {"type": "timeout", "severity": 0, "note": "t"})
    outcome.update("exception", {"type": "cancel", "severity": 0, "note": "c"})
    outcome.update("finish", {"status": 15})
    assert outcome.exception["type"] == "timeout"
    assert outcome.wait_status == 15
    assert not outcome.ended
    outcome.update("clean", {})
    assert outcome.ended


def test_remote_outcome_plain_finish():
    outcome = handler.RemoteOutcome()
    for name, ctx in [("alloc", {}), ("start", {}), ("finish", {"status": 768}), ("clean", {})]:
        outcome.update(name, ctx)
    assert outcome.started and outcome.ended
    assert outcome.exception is None and outcome.wait_status == 768


def test_exception_notes_name_the_remote_job_and_uri():
    cancel = handler.describe_remote_exception(
        "ƒR", "local:///t", {"type": "cancel", "severity": 0, "note": "by admin"}
    )
    assert cancel == "remote job ƒR on local:///t was canceled: by admin"
    alloc = handler.describe_remote_exception(
        "ƒR", "local:///t", {"type": "alloc", "severity": 0, "note": ""}
    )
    assert alloc == "remote job ƒR on local:///t failed: alloc exception"


def test_release_updates_report_the_wait_status():
    updates = handler.release_updates(768)
    test = updates["attributes.system.exec.test"]
    assert test["wait_status"] == 768
    # A zero duration would make job-exec wait forever.
    assert test["run_duration"] != "0" and float(test["run_duration"].rstrip("s")) > 0


@needs_flux
def test_local_R_is_valid_R():
    from flux.resource import ResourceSet

    R = handler.local_R("node0", now=100.0)
    rset = ResourceSet(R)
    assert str(rset.ranks) == "0"
    assert rset.nodelist.expand() == ["node0"]
    assert R["execution"]["starttime"] == 100.0


def test_local_end_reason():
    args = {"end_event": {"name": "exception", "context": {"type": "cancel", "note": "bye"}}}
    assert handler.local_end_reason(args, "ƒL") == "cancel in the source instance (job ƒL): bye"
    assert handler.local_end_reason({}, "ƒL") == "job ƒL ended in the source instance"


# -- registry -------------------------------------------------------------------


def test_registry_old_and_new_forms():
    clusters = handler.parse_registry(
        [
            "local:///tmp/a/local-0",
            {"uri": "ssh://big/run/flux/local", "label": "big", "users": ["alice"]},
        ],
        "config",
        "broker config",
    )
    assert [(c.uri, c.label, c.index) for c in clusters] == [
        ("local:///tmp/a/local-0", None, 0),
        ("ssh://big/run/flux/local", "big", 1),
    ]
    assert clusters[1].extra == {"users": ["alice"]}
    assert clusters[0].name == "local:///tmp/a/local-0"
    assert clusters[1].describe() == "big (ssh://big/run/flux/local)"


@pytest.mark.parametrize(
    "entries, message",
    [
        ("local:///x", "must be a list"),
        ([5], r"delegate\[0\]: must be a URI or a table"),
        ([{"label": "a"}], r"delegate\[0\]: 'uri' must be a non-empty string"),
        (["http://x/y"], "is not a local:// or ssh:// URI"),
        ([{"uri": "local:///x", "label": "a b"}], "may not contain white space"),
        ([{"uri": "local:///x", "label": "random"}], "is the name of a policy"),
        (
            [{"uri": "local:///x", "label": "a"}, {"uri": "local:///y", "label": "a"}],
            r"delegate\[1\]: label 'a' is already used by delegate\[0\]",
        ),
    ],
)
def test_registry_errors_name_the_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        handler.parse_registry(entries, "config", "broker config")


def test_broker_config_wins_over_user_registry():
    config = handler.parse_registry([{"uri": "local:///c", "label": "a"}], "config", "c")
    user = handler.parse_registry(
        [{"uri": "local:///u", "label": "a"}, {"uri": "local:///v", "label": "b"}], "user", "u"
    )
    registry, notes = handler.merge_registry(config, user)
    assert [(c.label, c.uri, c.origin) for c in registry.clusters] == [
        ("a", "local:///c", "config"),
        ("b", "local:///v", "user"),
    ]
    assert "overridden by the broker config" in notes[0]
    assert registry.by_label("b").uri == "local:///v"
    assert [c.label for c in registry.config_entries()] == ["a"]


def test_user_registry_file(tmp_path):
    path = tmp_path / "delegate.yaml"
    assert handler.read_user_registry(str(path)) == []
    path.write_text("delegate:\n  - uri: ssh://h/p\n    label: home\n  - local:///q\n")
    clusters = handler.read_user_registry(str(path))
    assert [(c.label, c.uri, c.origin) for c in clusters] == [
        ("home", "ssh://h/p", "user"),
        (None, "local:///q", "user"),
    ]
    path.write_text("delegate: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        handler.read_user_registry(str(path))
    path.write_text("clusters: []\n")
    with pytest.raises(ValueError, match="one key, 'delegate'"):
        handler.read_user_registry(str(path))


def test_user_registry_path():
    path = handler.default_user_registry_path
    assert path({"FLUX_DELEGATE_REGISTRY": "/x.yaml", "HOME": "/h"}) == "/x.yaml"
    assert path({"XDG_CONFIG_HOME": "/cfg"}) == "/cfg/flux/delegate.yaml"
    assert path({"HOME": "/h"}) == "/h/.config/flux/delegate.yaml"


def registry(*labels):
    return handler.Registry(
        handler.parse_registry(
            [{"uri": f"local:///{label}", "label": label} for label in labels], "config", "c"
        )
    )


def test_targets_by_label_and_policy():
    reg = registry("big", "small")
    assert handler.parse_target("big", reg).cluster.uri == "local:///big"
    target = handler.parse_target("assign:1", reg)
    assert (target.kind, target.policy, target.policy_arg) == ("policy", "assign", "1")
    target = handler.parse_target("", reg, default_policy="random")
    assert (target.kind, target.policy) == ("policy", "random")
    target = handler.parse_target("site", reg, policies=("random", "site"))
    assert (target.kind, target.policy) == ("policy", "site")
    with pytest.raises(ValueError, match="no delegation targets are configured for policy"):
        handler.parse_target("least_pending")


# -- policies ---------------------------------------------------------------------


def candidates(*specs):
    """(label, verdict, pending, match_time) -> Candidates in registry order."""
    result = []
    for index, (label, verdict, pending, match) in enumerate(specs):
        c = handler.Candidate(handler.Cluster(f"local:///{label}", label, "config", index))
        c.verdict, c.pending, c.match_time = verdict, pending, match
        result.append(c)
    return result


def names(order):
    return [c.label for c in order]


def test_least_pending_orders_by_pending_jobs():
    cs = candidates(("a", "feasible", 5, None), ("b", "feasible", None, None),
                    ("c", "feasible", 1, None), ("d", "feasible", 1, None))
    assert names(handler.order_least_pending(None, cs)) == ["c", "d", "a", "b"]


def test_shortest_match_needs_fluxion():
    cs = candidates(("a", "feasible", 0, 0.5), ("b", "feasible", 0, None), ("c", "feasible", 0, 0.1))
    assert names(handler.order_shortest_match(None, cs)) == ["c", "a"]
    none = candidates(("a", "feasible", 0, None))
    none[0].reason = "runs no Fluxion (no sched-fluxion-resource)"
    with pytest.raises(handler.PolicyError, match="no target runs Fluxion: a .*runs no Fluxion"):
        handler.order_shortest_match(None, none)


def test_assign_counts_config_entries_from_zero():
    cs = candidates(("a", "feasible", 0, None), ("b", "unreachable", 0, None), ("c", "feasible", 0, None))
    user = handler.Candidate(handler.Cluster("local:///u", "u", "user"))
    assert names(handler.order_assign(None, cs + [user])) == ["a", "b", "c"]
    assert names(handler.order_assign(None, cs, "1")) == ["b", "c"]
    assert names(handler.order_assign(None, cs, "2")) == ["c"]
    with pytest.raises(handler.PolicyError, match=r"sub-instance ID 3 out of range \(0..2\)"):
        handler.order_assign(None, cs, "3")
    with pytest.raises(handler.PolicyError, match="'x' is not a number"):
        handler.order_assign(None, cs, "x")
    with pytest.raises(handler.PolicyError, match="'-1' is not a number"):
        handler.order_assign(None, cs, "-1")


def test_random_is_a_permutation_and_takes_no_argument():
    cs = candidates(*[(str(i), "feasible", 0, None) for i in range(6)])
    assert sorted(names(handler.order_random(None, cs))) == sorted(names(cs))
    with pytest.raises(handler.PolicyError, match="takes no argument"):
        handler.order_random(None, cs, "x")


def test_apply_policy_checks_what_a_policy_returns():
    cs = candidates(("a", "feasible", 0, None), ("b", "feasible", 0, None))
    assert names(handler.apply_policy(lambda j, c, a: reversed(c), "rev", None, None, cs)) == ["b", "a"]
    stranger = candidates(("x", "feasible", 0, None))[0]
    with pytest.raises(handler.PolicyError, match="not one of its candidates"):
        handler.apply_policy(lambda j, c, a: [stranger], "bad", None, None, cs)
    with pytest.raises(handler.PolicyError, match="not one of its candidates"):
        handler.apply_policy(lambda j, c, a: [c[0], c[0]], "twice", None, None, cs)

    def broken(job, cands, arg):
        raise KeyError("gpu")

    with pytest.raises(handler.PolicyError, match="policy broken failed: KeyError"):
        handler.apply_policy(broken, "broken", None, None, cs)


def test_load_policy_from_a_file(tmp_path):
    path = tmp_path / "site.py"
    path.write_text(
        "def prefer_small(job, candidates):\n"
        "    return sorted(candidates, key=lambda c: c.label != 'small')\n"
    )
    order = handler.load_policy("site", f"{path}:prefer_small")
    cs = candidates(("big", "feasible", 0, None), ("small", "feasible", 0, None))
    assert names(order(None, cs, None)) == ["small", "big"]
    with pytest.raises(ValueError, match="has no function 'nope'"):
        handler.load_policy("site", f"{path}:nope")
    with pytest.raises(ValueError, match="is not 'module:function'"):
        handler.load_policy("site", "just_a_module")
    with pytest.raises(ValueError, match="cannot import no_such_module"):
        handler.load_policy("site", "no_such_module:f")


def test_no_target_message_lists_every_candidate():
    cs = candidates(("a", "infeasible", 0, None), ("b", "unreachable", 0, None))
    cs[0].reason, cs[1].reason = "unsatisfiable request", "no answer within 10s"
    message = handler.no_target_message(cs, cs)
    assert message == (
        "no target can run this job: a (local:///a): infeasible: unsatisfiable request;"
        " b (local:///b): unreachable: no answer within 10s"
    )
    assert handler.no_target_message([cs[1]], [cs[1]]) == (
        "cannot connect to local:///b: no answer within 10s"
    )


def test_failover_after_the_last_delegation_means_choose_again():
    log = [event("delegated", jobid=1, uri="local:///a"), event("delegate-failover", uri="local:///a")]
    assert handler.find_delegation(log) is None
    log.append(event("delegated", jobid=2, uri="local:///b"))
    assert handler.find_delegation(log) == {"jobid": 2, "uri": "local:///b"}


def test_candidate_record():
    c = candidates(("a", "feasible", 3, None))[0]
    assert c.record() == {"uri": "local:///a", "verdict": "feasible", "label": "a", "pending": 3}


def test_readme_site_policy_example():
    """The site policy shown in the README works as it says."""
    readme = os.path.join(os.path.dirname(HANDLER_PATH), "README.md")
    with open(readme) as fp:
        text = fp.read()
    start = text.index("```python\n# /etc/flux/delegate/site_policy.py")
    code = text[start + len("```python\n"): text.index("```", start + 3)]
    namespace = {}
    exec(compile(code, "README site_policy.py", "exec"), namespace)
    cs = candidates(("a", "unknown", 0, None), ("b", "feasible", 7, None), ("c", "feasible", 1, None))
    cs[0].cluster.extra["allowed-projects"] = ["chem"]
    cs[1].cluster.extra["allowed-projects"] = ["chem", "bio"]
    job = handler.JobView(1, 0, {"attributes": {"system": {"project": "bio"}}})
    order = handler.apply_policy(namespace["by_project"], "by-project", None, job, cs)
    assert names(order) == ["c", "b"]


def test_user_label_that_names_a_policy_is_left_out():
    user = handler.parse_registry([{"uri": "local:///u", "label": "site"}], "user", "u")
    registry, notes = handler.merge_registry([], user, policies=("random", "site"))
    assert registry.clusters == [] and "is the name of a policy" in notes[0]


def test_empty_registry_message():
    assert "no targets in the registry" in handler.no_target_message([], [])


def test_policy_config_errors():
    parse = handler.parse_policy_config
    assert parse({})[2] == "least_pending"
    with pytest.raises(ValueError, match="unknown keys"):
        parse({"delegate-policy": {"defualt": "random"}})
    with pytest.raises(ValueError, match="must be a table"):
        parse({"delegate-policy": {"custom": "x"}})
    with pytest.raises(ValueError, match="unknown default policy 'nope'"):
        parse({"delegate-policy": {"default": "nope"}})
    with pytest.raises(ValueError, match="'random' is a built-in policy"):
        parse({"delegate-policy": {"custom": {"random": "m:f"}}})


def test_plugin_options_defaults_and_numbers():
    options = handler.plugin_options({"handler": "/h.py", "submit-timeout": "5", "reconnect-interval": 0.5})
    assert options["handler"] == "/h.py"
    assert options["submit-timeout"] == 5.0 and options["reconnect-interval"] == 0.5
    assert options["reconnect-timeout"] == handler.DEFAULT_RECONNECT_TIMEOUT
    assert handler.plugin_options(None)["connect-timeout"] == handler.DEFAULT_CONNECT_TIMEOUT


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"submit-timout": "5"}, "unknown plugin option 'submit-timout' (known: handler, registry, submit-timeout"),
        ({"submit-timeout": "abc"}, "plugin option submit-timeout=abc: not a positive number of seconds"),
        ({"connect-timeout": "-3"}, "plugin option connect-timeout=-3: not a positive"),
        ({"reconnect-interval": "0"}, "plugin option reconnect-interval=0: not a positive"),
        ({"preflight-timeout": "inf"}, "preflight-timeout=inf: not a positive"),
        ({"reconnect-timeout": True}, "reconnect-timeout=True: not a positive"),
    ],
)
def test_plugin_options_errors_name_the_option(conf, message):
    with pytest.raises(ValueError) as info:
        handler.plugin_options(conf)
    assert message in str(info.value)


def test_delegations_lists_every_remote_job():
    log = [
        event("delegated", jobid=1, uri="local:///a"),
        event("delegate-failover", uri="local:///a"),
        event("delegated", jobid=2, uri="local:///b"),
        event("delegated", uri="local:///c"),  # malformed: no jobid
    ]
    assert handler.delegations(log) == [("local:///a", 1), ("local:///b", 2)]
