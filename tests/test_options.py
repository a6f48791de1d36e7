"""Unit tests of flux_delegate.options: the plugin's options."""

import pytest

from flux_delegate.options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_RECONNECT_TIMEOUT, plugin_options


def test_plugin_options_defaults_and_numbers():
    options = plugin_options({"handler": "/h.py", "submit-timeout": "5", "reconnect-interval": 0.5})
    assert options["handler"] == "/h.py"
    assert options["submit-timeout"] == 5.0 and options["reconnect-interval"] == 0.5
    assert options["reconnect-timeout"] == DEFAULT_RECONNECT_TIMEOUT
    assert plugin_options(None)["connect-timeout"] == DEFAULT_CONNECT_TIMEOUT


@pytest.mark.parametrize(
    "conf, message",
    [
        (
            {"submit-timout": "5"},
            "unknown plugin option 'submit-timout' (known: handler, pythonpath, registry, submit-timeout",
        ),
        (
            {"submit-timeout": "abc"},
            "plugin option submit-timeout=abc: not a positive number of seconds",
        ),
        ({"connect-timeout": "-3"}, "plugin option connect-timeout=-3: not a positive"),
        ({"reconnect-interval": "0"}, "plugin option reconnect-interval=0: not a positive"),
        ({"preflight-timeout": "inf"}, "preflight-timeout=inf: not a positive"),
        ({"reconnect-timeout": True}, "reconnect-timeout=True: not a positive"),
    ],
)
def test_plugin_options_errors_name_the_option(conf, message):
    with pytest.raises(ValueError) as info:
        plugin_options(conf)
    assert message in str(info.value)
