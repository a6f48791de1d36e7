"""Unit tests of flux_delegate.policies: candidates, orders, site policies."""

import os
import sys

import pytest
from unit import needs_flux

from flux_delegate.policies import (
    Candidate,
    JobView,
    PolicyError,
    apply_policy,
    load_policy,
    no_target_message,
    order_assign,
    order_least_pending,
    order_random,
    order_shortest_match,
    parse_policy_config,
)
from flux_delegate import policies as policies_module
from flux_delegate.registry import Cluster


def candidates(*specs):
    """(label, verdict, pending, match_time) -> Candidates in registry order."""
    result = []
    for index, (label, verdict, pending, match) in enumerate(specs):
        c = Candidate(Cluster(f"local:///{label}", label, "config", index))
        c.verdict, c.pending, c.match_time = verdict, pending, match
        result.append(c)
    return result


def names(order):
    return [c.label for c in order]


def test_least_pending_orders_by_pending_jobs():
    cs = candidates(
        ("a", "feasible", 5, None),
        ("b", "feasible", None, None),
        ("c", "feasible", 1, None),
        ("d", "feasible", 1, None),
    )
    assert names(order_least_pending(None, cs)) == ["c", "d", "a", "b"]


def test_shortest_match_needs_fluxion():
    cs = candidates(
        ("a", "feasible", 0, 0.5), ("b", "feasible", 0, None), ("c", "feasible", 0, 0.1)
    )
    assert names(order_shortest_match(None, cs)) == ["c", "a"]
    none = candidates(("a", "feasible", 0, None))
    none[0].reason = "runs no Fluxion (no sched-fluxion-resource)"
    with pytest.raises(PolicyError, match="no target runs Fluxion: a .*runs no Fluxion"):
        order_shortest_match(None, none)


def test_assign_counts_config_entries_from_zero():
    cs = candidates(
        ("a", "feasible", 0, None), ("b", "unreachable", 0, None), ("c", "feasible", 0, None)
    )
    user = Candidate(Cluster("local:///u", "u", "user"))
    assert names(order_assign(None, cs + [user])) == ["a", "b", "c"]
    assert names(order_assign(None, cs, "1")) == ["b", "c"]
    assert names(order_assign(None, cs, "2")) == ["c"]
    with pytest.raises(PolicyError, match=r"sub-instance ID 3 out of range \(0..2\)"):
        order_assign(None, cs, "3")
    with pytest.raises(PolicyError, match="'x' is not a number"):
        order_assign(None, cs, "x")
    with pytest.raises(PolicyError, match="'-1' is not a number"):
        order_assign(None, cs, "-1")


def test_random_is_a_permutation_and_takes_no_argument():
    cs = candidates(*[(str(i), "feasible", 0, None) for i in range(6)])
    assert sorted(names(order_random(None, cs))) == sorted(names(cs))
    with pytest.raises(PolicyError, match="takes no argument"):
        order_random(None, cs, "x")


def test_apply_policy_checks_what_a_policy_returns():
    cs = candidates(("a", "feasible", 0, None), ("b", "feasible", 0, None))
    assert names(apply_policy(lambda j, c, a: reversed(c), "rev", None, None, cs)) == ["b", "a"]
    stranger = candidates(("x", "feasible", 0, None))[0]
    with pytest.raises(PolicyError, match="not one of its candidates"):
        apply_policy(lambda j, c, a: [stranger], "bad", None, None, cs)
    with pytest.raises(PolicyError, match="not one of its candidates"):
        apply_policy(lambda j, c, a: [c[0], c[0]], "twice", None, None, cs)

    def broken(job, cands, arg):
        raise KeyError("gpu")

    with pytest.raises(PolicyError, match="policy broken failed: KeyError"):
        apply_policy(broken, "broken", None, None, cs)


def test_load_policy_from_a_file(tmp_path):
    path = tmp_path / "site.py"
    path.write_text(
        "def prefer_small(job, candidates):\n"
        "    return sorted(candidates, key=lambda c: c.label != 'small')\n"
    )
    order = load_policy("site", f"{path}:prefer_small")
    cs = candidates(("big", "feasible", 0, None), ("small", "feasible", 0, None))
    assert names(order(None, cs, None)) == ["small", "big"]
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_policy("site", f"{path}:nope")
    with pytest.raises(ValueError, match="is not 'module:function'"):
        load_policy("site", "just_a_module")
    with pytest.raises(ValueError, match="cannot import no_such_module"):
        load_policy("site", "no_such_module:f")


def test_an_edited_policy_module_is_read_again(tmp_path, monkeypatch):
    """'flux config reload' runs an edited module:function policy."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "edited_site_policy.py"
    cs = candidates(("a", "feasible", 0, None), ("b", "feasible", 0, None))
    try:
        module.write_text("def order(job, candidates):\n    return candidates[:1]\n")
        first = load_policy("site", "edited_site_policy:order")
        assert names(first(None, cs, None)) == ["a"]
        # Another size: a cached .pyc is checked by the source's mtime (in
        # seconds) and size, and this edit comes within the same second.
        module.write_text("def order(job, candidates):\n    return list(reversed(candidates))\n")
        second = load_policy("site", "edited_site_policy:order")
        assert names(second(None, cs, None)) == ["b", "a"]
        assert names(first(None, cs, None)) == ["a"]  # the first load keeps its own
        assert names(sys.modules["edited_site_policy"].order(None, cs)) == ["b", "a"]
    finally:
        sys.modules.pop("edited_site_policy", None)


def test_an_edited_policy_file_is_read_again(tmp_path):
    path = tmp_path / "site.py"
    cs = candidates(("a", "feasible", 0, None), ("b", "feasible", 0, None))
    path.write_text("def order(job, candidates):\n    return candidates[:1]\n")
    assert names(load_policy("site", f"{path}:order")(None, cs, None)) == ["a"]
    path.write_text("def order(job, candidates):\n    return list(reversed(candidates))\n")
    assert names(load_policy("site", f"{path}:order")(None, cs, None)) == ["b", "a"]


def test_policies_of_one_configuration_share_their_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "shared_site_policy.py").write_text(
        "calls = []\n"
        "def first(job, candidates):\n    calls.append('first')\n    return candidates\n"
        "def second(job, candidates):\n    calls.append('second')\n    return candidates\n"
    )
    path = tmp_path / "site.py"
    path.write_text("def one(job, candidates):\n    return candidates\ndef two(job, candidates):\n    return []\n")
    try:
        custom = parse_policy_config(
            {
                "delegate-policy": {
                    "custom": {
                        "p1": "shared_site_policy:first",
                        "p2": "shared_site_policy:second",
                        "f1": f"{path}:one",
                        "f2": f"{path}:two",
                    }
                }
            }
        )[1]
        cs = candidates(("a", "feasible", 0, None))
        custom["p1"](None, cs, None)
        custom["p2"](None, cs, None)
        assert sys.modules["shared_site_policy"].calls == ["first", "second"]
    finally:
        sys.modules.pop("shared_site_policy", None)


def test_the_handler_package_and_flux_are_not_imported_again():
    """A policy from flux_delegate (or delegate_handler, or flux) is the
    loaded module's own function: a second copy of the package would have
    its own PolicyError, which apply_policy would not pass through."""
    module = sys.modules["flux_delegate.policies"]
    assert load_policy("r", "flux_delegate.policies:order_random") is order_random
    assert sys.modules["flux_delegate.policies"] is module


@needs_flux
def test_policy_files_are_imported_by_flux_importer():
    import flux.importer

    assert policies_module.import_path is flux.importer.import_path


def test_no_target_message_lists_every_candidate():
    cs = candidates(("a", "infeasible", 0, None), ("b", "unreachable", 0, None))
    cs[0].reason, cs[1].reason = "unsatisfiable request", "no answer within 10s"
    message = no_target_message(cs, cs)
    assert message == (
        "no target can run this job: a (local:///a): infeasible: unsatisfiable request;"
        " b (local:///b): unreachable: no answer within 10s"
    )
    assert no_target_message([cs[1]], [cs[1]]) == (
        "cannot connect to local:///b: no answer within 10s"
    )


def test_readme_site_policy_example():
    """The site policy shown in the README works as it says."""
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(readme) as fp:
        text = fp.read()
    start = text.index("```python\n# /etc/flux/delegate/site_policy.py")
    code = text[start + len("```python\n") : text.index("```", start + 3)]
    namespace = {}
    exec(compile(code, "README site_policy.py", "exec"), namespace)
    cs = candidates(
        ("a", "unknown", 0, None), ("b", "feasible", 7, None), ("c", "feasible", 1, None)
    )
    cs[0].cluster.extra["allowed-projects"] = ["chem"]
    cs[1].cluster.extra["allowed-projects"] = ["chem", "bio"]
    job = JobView(1, 0, {"attributes": {"system": {"project": "bio"}}})
    order = apply_policy(namespace["by_project"], "by-project", None, job, cs)
    assert names(order) == ["c", "b"]


def test_empty_registry_message():
    assert "no targets in the registry" in no_target_message([], [])


def test_policy_config_errors():
    parse = parse_policy_config
    assert parse({})[2] == "least_pending"
    with pytest.raises(ValueError, match="unknown keys"):
        parse({"delegate-policy": {"defualt": "random"}})
    with pytest.raises(ValueError, match="must be a table"):
        parse({"delegate-policy": {"custom": "x"}})
    with pytest.raises(ValueError, match="unknown default policy 'nope'"):
        parse({"delegate-policy": {"default": "nope"}})
    with pytest.raises(ValueError, match="'random' is a built-in policy"):
        parse({"delegate-policy": {"custom": {"random": "m:f"}}})


def test_candidate_record():
    c = candidates(("a", "feasible", 3, None))[0]
    assert c.record() == {"uri": "local:///a", "verdict": "feasible", "label": "a", "pending": 3}
