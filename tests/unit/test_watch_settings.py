"""daemon.settings.WatchSettings: one typed value built once from `ipvlanctl watch`'s options."""
from __future__ import annotations

import dataclasses

import pytest

from reconciler.cli import build_parser
from reconciler.daemon.settings import WatchSettings
from reconciler.errors import UserError


def parse(*argv):
    return build_parser().parse_args(["watch", *argv])


def test_defaults_of_the_settings_are_the_parsers():
    """Built by hand (tests, cluster mode) or from the command line: the same daemon."""
    s = WatchSettings.from_args(parse("/m"))
    assert s == WatchSettings(paths=("/m",), state_dir="/var/lib/ipvlan-reconciler")


def test_options_reach_their_fields():
    s = WatchSettings.from_args(parse(
        "/a", "/b", "--state-dir", "/s", "--debounce", "0", "--resync-interval", "5", "--status-file", "",
        "--metrics-addr", "9100", "--lock-timeout", "7", "--max-backoff", "9", "--host", "h1",
        "--bird-config", "/b.conf", "--bird-socket", "/b.ctl", "--log-format", "json", "--log-level", "debug"))
    assert s == WatchSettings(paths=("/a", "/b"), state_dir="/s", status_file=None, debounce=0.0,
                              resync_interval=5.0, lock_timeout=7.0, backoff_cap=9.0, metrics_addr="9100",
                              host="h1", bird_config="/b.conf", bird_socket="/b.ctl", log_format="json",
                              log_level="debug")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.debounce = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("argv, message", [
    ((), "watch needs manifest directories"),
    (("/m", "--etcd", "http://e:2379"), "give no PATH"),
])
def test_combinations_that_cannot_work_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        WatchSettings.from_args(parse(*argv))


def test_negative_debounce_is_refused():
    s = WatchSettings.from_args(parse("/m", "--debounce", "-1"))
    with pytest.raises(UserError, match="--debounce must not be negative"):
        s.check()


def test_daemon_takes_settings_or_options_by_name(tmp_path):
    from reconciler.daemon.watch import Daemon

    s = WatchSettings(paths=(str(tmp_path),), state_dir=str(tmp_path / "st"), status_file=None, debounce=2.0)
    by_settings = Daemon(s, kernel_factory=lambda: None)
    by_name = Daemon([str(tmp_path)], str(tmp_path / "st"), status_file=None, debounce=2.0,
                     kernel_factory=lambda: None)
    assert by_settings.settings == by_name.settings == s
    assert by_settings.triggers.debounce == 2.0
    with pytest.raises(TypeError):
        Daemon(s, debounce=1.0)
    with pytest.raises(TypeError):
        Daemon([str(tmp_path)], str(tmp_path / "st"), no_such_option=1)
