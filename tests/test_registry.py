"""Unit tests of flux_delegate.registry: the broker config's and the user's targets."""

import pytest

from flux_delegate.registry import (
    default_user_registry_path,
    merge_registry,
    parse_registry,
    read_user_registry,
)


def test_registry_old_and_new_forms():
    clusters = parse_registry(
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
        parse_registry(entries, "config", "broker config")


def test_broker_config_wins_over_user_registry():
    config = parse_registry([{"uri": "local:///c", "label": "a"}], "config", "c")
    user = parse_registry(
        [{"uri": "local:///u", "label": "a"}, {"uri": "local:///v", "label": "b"}], "user", "u"
    )
    registry, notes = merge_registry(config, user)
    assert [(c.label, c.uri, c.origin) for c in registry.clusters] == [
        ("a", "local:///c", "config"),
        ("b", "local:///v", "user"),
    ]
    assert "overridden by the broker config" in notes[0]
    assert registry.by_label("b").uri == "local:///v"
    assert [c.label for c in registry.config_entries()] == ["a"]


def test_user_registry_file(tmp_path):
    path = tmp_path / "delegate.yaml"
    assert read_user_registry(str(path)) == []
    path.write_text("delegate:\n  - uri: ssh://h/p\n    label: home\n  - local:///q\n")
    clusters = read_user_registry(str(path))
    assert [(c.label, c.uri, c.origin) for c in clusters] == [
        ("home", "ssh://h/p", "user"),
        (None, "local:///q", "user"),
    ]
    path.write_text("delegate: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_user_registry(str(path))
    path.write_text("clusters: []\n")
    with pytest.raises(ValueError, match="one key, 'delegate'"):
        read_user_registry(str(path))


def test_user_registry_path():
    path = default_user_registry_path
    assert path({"FLUX_DELEGATE_REGISTRY": "/x.yaml", "HOME": "/h"}) == "/x.yaml"
    assert path({"XDG_CONFIG_HOME": "/cfg"}) == "/cfg/flux/delegate.yaml"
    assert path({"HOME": "/h"}) == "/h/.config/flux/delegate.yaml"


def test_user_label_that_names_a_policy_is_left_out():
    user = parse_registry([{"uri": "local:///u", "label": "site"}], "user", "u")
    registry, notes = merge_registry([], user, policies=("random", "site"))
    assert registry.clusters == [] and "is the name of a policy" in notes[0]
