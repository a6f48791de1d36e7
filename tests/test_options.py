"""Unit tests of flux_delegate.options: the plugin's options."""

import pytest
from unit import needs_flux

from flux_delegate import options as options_module
from flux_delegate.options import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_RECONNECT_TIMEOUT,
    MAX_OUTPUT_LIMIT,
    plugin_options,
)


def test_plugin_options_defaults_and_numbers():
    options = plugin_options({"handler": "/h.py", "submit-timeout": "5", "reconnect-interval": 0.5})
    assert options["handler"] == "/h.py"
    assert options["submit-timeout"] == 5.0 and options["reconnect-interval"] == 0.5
    assert options["reconnect-timeout"] == DEFAULT_RECONNECT_TIMEOUT
    assert plugin_options(None)["connect-timeout"] == DEFAULT_CONNECT_TIMEOUT
    assert plugin_options({"connect-timeout": 7})["connect-timeout"] == 7.0


@needs_flux
def test_durations_are_read_as_flux_reads_them():
    from flux.util import parse_fsd

    assert options_module.parse_fsd is parse_fsd
    options = plugin_options(
        {
            "submit-timeout": "30s",
            "connect-timeout": "5m",
            "reconnect-timeout": "1.5h",
            "reconnect-interval": "500ms",
            "preflight-timeout": " 7 ",
        }
    )
    assert options["submit-timeout"] == 30.0
    assert options["connect-timeout"] == 300.0
    assert options["reconnect-timeout"] == 5400.0
    assert options["reconnect-interval"] == 0.5
    assert options["preflight-timeout"] == 7.0


@pytest.mark.parametrize(
    "conf, message",
    [
        (
            {"submit-timout": "5"},
            "unknown plugin option 'submit-timout' (known: handler, pythonpath, registry,"
            " submit-timeout, connect-timeout, preflight-timeout, reconnect-timeout,"
            " reconnect-interval, preflight-cache, estimate-cache, output-batch-timeout, output-limit,"
            " output-tail, early-handoff,"
            " journal, annotate, mirror-run, live-output)",
        ),
        ({"connect-timeout": "-3"}, "plugin option connect-timeout=-3: must be more than 0 seconds"),
        ({"connect-timeout": -1.5}, "plugin option connect-timeout=-1.5: must be more than 0 seconds"),
        ({"reconnect-interval": "0"}, "plugin option reconnect-interval=0: must be more than 0 seconds"),
        ({"reconnect-interval": 0}, "plugin option reconnect-interval=0: must be more than 0 seconds"),
        ({"submit-timeout": 10**400}, f"plugin option submit-timeout={10**400}: too long a duration"),
        (
            {"output-batch-timeout": "-1"},
            "plugin option output-batch-timeout=-1: must be 0 (off) or more",
        ),
    ],
)
def test_plugin_options_errors_name_the_option(conf, message):
    with pytest.raises(ValueError) as info:
        plugin_options(conf)
    assert str(info.value) == message


@needs_flux
@pytest.mark.parametrize(
    "conf, message",
    [
        ({"submit-timeout": "abc"}, "plugin option submit-timeout=abc: not a duration (e.g. 30, 30s, 5m)"),
        ({"submit-timeout": "5x"}, "plugin option submit-timeout=5x: not a duration (e.g. 30, 30s, 5m)"),
        ({"submit-timeout": ""}, "plugin option submit-timeout=: not a duration (e.g. 30, 30s, 5m)"),
        ({"submit-timeout": "nan"}, "plugin option submit-timeout=nan: not a duration (e.g. 30, 30s, 5m)"),
        ({"submit-timeout": None}, "plugin option submit-timeout=None: not a duration (e.g. 30, 30s, 5m)"),
        ({"connect-timeout": "-5m"}, "plugin option connect-timeout=-5m: must be more than 0 seconds"),
        ({"reconnect-interval": "0s"}, "plugin option reconnect-interval=0s: must be more than 0 seconds"),
        (
            {"preflight-timeout": "inf"},
            "plugin option preflight-timeout=inf: not a finite duration (e.g. 30, 30s, 5m)",
        ),
        (
            {"preflight-timeout": float("inf")},
            "plugin option preflight-timeout=inf: not a finite duration (e.g. 30, 30s, 5m)",
        ),
        (
            {"reconnect-timeout": True},
            "plugin option reconnect-timeout=True: not a duration (e.g. 30, 30s, 5m)",
        ),
        ({"reconnect-timeout": "1e10d"}, "plugin option reconnect-timeout=1e10d: too long a duration"),
    ],
)
def test_plugin_options_refuse_what_is_not_a_positive_duration(conf, message):
    with pytest.raises(ValueError) as info:
        plugin_options(conf)
    assert str(info.value) == message


def test_without_flux_bindings_a_duration_is_plain_seconds(monkeypatch):
    monkeypatch.setattr(options_module, "parse_fsd", None)
    assert plugin_options({"submit-timeout": "2.5"})["submit-timeout"] == 2.5
    example = "(seconds, e.g. 30: 30s or 5m need flux-core's Python bindings)"
    for conf, message in [
        ({"submit-timeout": "30s"}, f"plugin option submit-timeout=30s: not a duration {example}"),
        ({"submit-timeout": "inf"}, f"plugin option submit-timeout=inf: not a finite duration {example}"),
        ({"submit-timeout": False}, f"plugin option submit-timeout=False: not a duration {example}"),
        ({"submit-timeout": "-3"}, "plugin option submit-timeout=-3: must be more than 0 seconds"),
    ]:
        with pytest.raises(ValueError) as info:
            plugin_options(conf)
        assert str(info.value) == message


def test_output_limit_is_a_size():
    assert plugin_options(None)["output-limit"] == DEFAULT_OUTPUT_LIMIT == 4 * 1024 * 1024
    for value, nbytes in [
        ("4M", 4 << 20),
        ("512k", 512 << 10),
        ("1G", None),  # more than the most
        (" 16K ", 16 << 10),
        ("1000", 1000),
        (2048, 2048),
        ("0", 0),
        (0, 0),
        ("100M", MAX_OUTPUT_LIMIT),
    ]:
        if nbytes is None:
            with pytest.raises(ValueError) as info:
                plugin_options({"output-limit": value})
            assert str(info.value) == f"plugin option output-limit={value}: must be from 0 to 100M"
        else:
            assert plugin_options({"output-limit": value})["output-limit"] == nbytes


@pytest.mark.parametrize("value", ["lots", "4MB", "-1", "1.5M", "", "M", True, None, 2.5, "４M"])
def test_output_limit_refuses_what_is_not_a_size(value):
    with pytest.raises(ValueError) as info:
        plugin_options({"output-limit": value})
    assert str(info.value) in (
        f"plugin option output-limit={value}: not a size (bytes, or with K, M or G: e.g. 4M)",
    )


def test_preflight_cache_is_a_duration_that_may_be_off():
    assert plugin_options(None)["preflight-cache"] == 60.0
    assert plugin_options({"preflight-cache": "0"})["preflight-cache"] == 0.0
    assert plugin_options({"preflight-cache": 0})["preflight-cache"] == 0.0
    assert plugin_options({"preflight-cache": "2.5"})["preflight-cache"] == 2.5
    with pytest.raises(ValueError) as info:
        plugin_options({"preflight-cache": "-1"})
    assert str(info.value) == "plugin option preflight-cache=-1: must be 0 (off) or more"


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), ("true", True), ("Yes", True), ("1", True), (False, False), ("false", False),
     ("no", False), (" 0 ", False), (0, False)],
)
def test_early_handoff_journal_and_annotate_are_true_or_false(value, expected):
    for key in ("early-handoff", "journal", "annotate"):
        assert plugin_options(None)[key] is True
        assert plugin_options({key: value})[key] is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, 0.5, None, "tru"])
def test_early_handoff_refuses_what_is_not_true_or_false(value):
    with pytest.raises(ValueError) as info:
        plugin_options({"early-handoff": value})
    assert str(info.value) == f"plugin option early-handoff={value}: not true or false"
