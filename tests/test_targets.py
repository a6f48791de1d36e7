"""Unit tests of flux_delegate.targets: what a user writes after delegate:."""

import pytest
from unit import JobID, needs_flux

from flux_delegate.registry import Registry, parse_registry
from flux_delegate.targets import check_local_or_ssh, parse_target
from flux_delegate.text import shown


def registry(*labels):
    return Registry(
        parse_registry(
            [{"uri": f"local:///{label}", "label": label} for label in labels], "config", "c"
        )
    )


@pytest.mark.parametrize("value", [None, ""])
def test_empty_value_needs_a_registry(value):
    with pytest.raises(ValueError, match="no delegation targets are configured"):
        parse_target(value)


def test_non_string_value_is_rejected():
    with pytest.raises(ValueError, match="the target must be a string, not"):
        parse_target(5)


@pytest.mark.parametrize("value", ["local:///tmp/a b", "ssh://host/\tx", "a\nb", "   ", "\u00a0"])
def test_white_space_is_rejected(value):
    with pytest.raises(ValueError, match="white space or control characters"):
        parse_target(value)


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
    target = parse_target(value)
    assert (target.kind, target.scheme, target.value) == (kind, scheme, value)


@pytest.mark.parametrize("value", ["SSH://host/tmp/x", "Local:///tmp/x", "local:/tmp/x"])
def test_schemes_are_taken_as_flux_connectors_take_them(value):
    """flux's connectors are found by the scheme as written."""
    with pytest.raises(ValueError, match="not a local:// or ssh:// URI"):
        parse_target(value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("abc", "'abc'"),
        ("a\nb", "'a\\nb'"),
        ("é" * 600, "'" + "é" * 30 + "...(600 characters)'"),
        ("x" * 41, "'" + "x" * 40 + "...(41 characters)'"),
        (5, "'5'"),
        ({"a": 1}, "'{\"a\": 1}'"),
    ],
)
def test_values_are_shown_short(value, expected):
    assert shown(value) == expected
    assert len(shown(value).encode()) <= 84


@needs_flux
def test_bare_job_ids():
    target = parse_target("ƒ2222222")
    assert target.kind == "jobid"
    assert [int(j) for j in target.jobids] == [int(JobID("ƒ2222222"))]
    nested = parse_target("ƒ2222222/1234")
    assert [int(j) for j in nested.jobids] == [int(JobID("ƒ2222222")), 1234]


@needs_flux
def test_bare_word_is_not_a_target():
    with pytest.raises(ValueError, match="not a URI, job id, registry label or policy"):
        parse_target("cluster-a")


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
        check_local_or_ssh(value)


@needs_flux
def test_usable_uris():
    for uri in ("local:///tmp/x/local-0", "ssh://h/tmp/x/local-0"):
        assert check_local_or_ssh(uri) == uri


def test_targets_by_label_and_policy():
    reg = registry("big", "small")
    assert parse_target("big", reg).cluster.uri == "local:///big"
    target = parse_target("assign:1", reg)
    assert (target.kind, target.policy, target.policy_arg) == ("policy", "assign", "1")
    target = parse_target("", reg, default_policy="random")
    assert (target.kind, target.policy) == ("policy", "random")
    target = parse_target("site", reg, policies=("random", "site"))
    assert (target.kind, target.policy) == ("policy", "site")
    with pytest.raises(ValueError, match="no delegation targets are configured for policy"):
        parse_target("least_pending")
