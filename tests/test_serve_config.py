"""``noxblock serve``'s options from a config file and the environment, and the control loop's
settings from the options.

* :func:`noxblock.serve.config_defaults`: a ``[serve]`` table sets options (converted like the
  command line's); ``NOXBLOCK_<OPTION>`` variables override the file; an unknown key, a value of
  the wrong type, a value not among the choices, an unreadable file, bad TOML and a ``serve`` key
  that is not a table each raise :class:`~noxblock.serve.ConfigFileError` naming the file or the
  variable and the key;
* :func:`noxblock.cli.main`: the command line overrides both (``serve.run`` is replaced by a stub
  that records its arguments, so no server starts); a bad config file exits with code 2 and a
  message naming the file and the key;
* :func:`noxblock.serve.control_settings`: options to :class:`~noxblock.live.ControlSettings`
  (step, horizon, coarse step, policy, time limits, defaults); ``--no-control`` gives None.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pytest

from noxblock import cli, serve
from noxblock.live import Defaults


def serve_parser() -> argparse.ArgumentParser:
    """The ``serve`` sub-parser of the console script, as ``cli.main`` finds it."""
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def write(tmp_path: Path, text: str, name: str = "noxblock.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- config_defaults ------------------------------------------------------------------------------
def test_a_serve_table_sets_options_converted_like_the_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [other]
        ignored = "yes"

        [serve]
        port = 9100
        control_interval_s = 120
        "horizon-h" = "12.5"
        policy = "edf"
        no_control = true
        unknown = "Accepted"
        default_energy_kwh = 20.0
        """,
    )
    got = serve.config_defaults(serve_parser(), path, {})
    assert got == {
        "port": 9100,
        "control_interval_s": 120.0,
        "horizon_h": 12.5,
        "policy": "edf",
        "no_control": True,
        "unknown": "Accepted",
        "default_energy_kwh": 20.0,
    }
    assert isinstance(got["control_interval_s"], float) and isinstance(got["port"], int)


def test_environment_variables_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[serve]\npolicy = "edf"\nhorizon_h = 12\nport = 9100\n')
    environ = {
        "NOXBLOCK_POLICY": "llf",
        "NOXBLOCK_SOLVER_TIME_LIMIT_S": "2.5",
        "NOXBLOCK_NO_CONTROL": "off",
        "NOXBLOCK_NOT_AN_OPTION": "x",  # not an option's name: not ours, ignored
        "NOXBLOCK_SITE": "elsewhere.toml",  # --site is never taken from here
    }
    got = serve.config_defaults(serve_parser(), path, environ)
    assert got == {
        "policy": "llf",
        "horizon_h": 12.0,
        "port": 9100,
        "solver_time_limit_s": 2.5,
        "no_control": False,
    }
    assert serve.config_defaults(serve_parser(), None, {}) == {}


@pytest.mark.parametrize(
    ("body", "key", "why"),
    [
        ("bogus = 1", "bogus", "unknown option"),
        ("site = 'x.toml'", "site", "unknown option"),  # the site file is the command line's
        ("control_interval_s = 'abc'", "control_interval_s", "not a number"),
        ("control_interval_s = -5", "control_interval_s", "must be a positive number"),
        ("control_interval_s = true", "control_interval_s", "not a number"),
        ("port = 9000.5", "port", "invalid literal"),
        ("lockout_s = [1, 2]", "lockout_s", "expected a single value"),
        ("no_control = 'maybe'", "no_control", "expected true or false"),
        ("policy = 'greedy'", "policy", "expected one of milp, edf, llf, equal-share"),
        ("unknown = 'accepted'", "unknown", "expected one of Accepted, Pending, Rejected"),
    ],
)
def test_a_bad_key_or_value_in_the_file_names_the_file_and_the_key(
    tmp_path: Path, body: str, key: str, why: str
) -> None:
    path = write(tmp_path, f"[serve]\n{body}\n")
    with pytest.raises(serve.ConfigFileError) as err:
        serve.config_defaults(serve_parser(), path, {})
    assert str(err.value).startswith(f"{path}: [serve] {key}: ")
    assert why in str(err.value)


@pytest.mark.parametrize("body", ["host = 127", "timezone = 5"])
def test_a_number_for_a_text_option_is_refused(tmp_path: Path, body: str) -> None:
    path = write(tmp_path, f"[serve]\n{body}\n")
    with pytest.raises(serve.ConfigFileError, match=r"\[serve\] (host|timezone)"):
        serve.config_defaults(serve_parser(), path, {})


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("NOXBLOCK_POLICY", "greedy", "expected one of"),
        ("NOXBLOCK_PORT", "x", "invalid literal"),
        ("NOXBLOCK_CONTROL_INTERVAL_S", "inf", "must be a positive number"),
        ("NOXBLOCK_ALLOW_UNAUTHENTICATED", "perhaps", "expected true or false"),
    ],
)
def test_a_bad_environment_variable_is_named(name: str, value: str, why: str) -> None:
    with pytest.raises(serve.ConfigFileError) as err:
        serve.config_defaults(serve_parser(), None, {name: value})
    assert str(err.value).startswith(f"environment variable {name}: ")
    assert why in str(err.value)


def test_an_environment_variable_is_checked_even_over_a_good_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[serve]\nport = 9100\n")
    with pytest.raises(serve.ConfigFileError, match="environment variable NOXBLOCK_PORT"):
        serve.config_defaults(serve_parser(), path, {"NOXBLOCK_PORT": "ninety"})


def test_an_unreadable_or_malformed_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(serve.ConfigFileError, match=rf"^{missing}: No such file"):
        serve.config_defaults(serve_parser(), missing, {})
    with pytest.raises(serve.ConfigFileError, match=rf"^{tmp_path}: Is a directory"):
        serve.config_defaults(serve_parser(), str(tmp_path), {})
    bad = write(tmp_path, "[serve\nport = 1\n", "bad.toml")
    with pytest.raises(serve.ConfigFileError, match=rf"^{bad}: .*line 1"):
        serve.config_defaults(serve_parser(), bad, {})
    not_table = write(tmp_path, "serve = 3\n", "flat.toml")
    with pytest.raises(serve.ConfigFileError, match=rf"^{not_table}: \[serve\] must be a table"):
        serve.config_defaults(serve_parser(), not_table, {})


# -- cli.main: precedence and exit codes ----------------------------------------------------------
@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """``serve.run`` replaced by a stub: the arguments ``main`` would have served with."""
    calls: list[argparse.Namespace] = []

    def fake_run(args: argparse.Namespace) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(serve, "run", fake_run)
    for name in ("NOXBLOCK_CONFIG", "NOXBLOCK_POLICY", "NOXBLOCK_HORIZON_H", "NOXBLOCK_PORT"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_command_line_over_environment_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ran: list[argparse.Namespace]
) -> None:
    path = write(tmp_path, '[serve]\npolicy = "edf"\nhorizon_h = 12\ncontrol_interval_s = 600\nport = 9100\n')
    monkeypatch.setenv("NOXBLOCK_POLICY", "llf")
    monkeypatch.setenv("NOXBLOCK_HORIZON_H", "6")
    argv = ["serve", "--site", "site.toml", "--config", path, "--policy", "equal-share", "--port", "9200"]
    assert cli.main(argv) == 0
    (args,) = ran
    assert args.policy == "equal-share"  # command line over environment over file
    assert args.port == 9200  # command line over file
    assert args.horizon_h == 6.0  # environment over file
    assert args.control_interval_s == 600.0  # file over the default
    assert args.solver_time_limit_s == 5.0  # the default
    assert args.site == "site.toml"


def test_noxblock_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ran: list[argparse.Namespace]
) -> None:
    path = write(tmp_path, "[serve]\nreplan_deadline_s = 3\n")
    monkeypatch.setenv("NOXBLOCK_CONFIG", path)
    assert cli.main(["serve", "--site", "site.toml"]) == 0
    assert ran[0].replan_deadline_s == 3.0


def test_a_bad_config_file_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ran: list[argparse.Namespace]
) -> None:
    path = write(tmp_path, "[serve]\ncontrol_interval_s = 'often'\n")
    assert cli.main(["serve", "--site", "site.toml", "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"noxblock serve: {path}: [serve] control_interval_s: ")
    assert ran == []  # never served


def test_a_bad_environment_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ran: list[argparse.Namespace]
) -> None:
    monkeypatch.setenv("NOXBLOCK_POLICY", "fastest")
    assert cli.main(["serve", "--site", "site.toml", "--policy", "edf"]) == 2
    assert "environment variable NOXBLOCK_POLICY" in capsys.readouterr().err
    assert ran == []


# -- control_settings -----------------------------------------------------------------------------
def settings_of(*argv: str) -> object:
    return serve.control_settings(serve_parser().parse_args(["--site", "site.toml", *argv]))


def test_control_settings_from_the_options() -> None:
    got = settings_of(
        "--control-interval-s", "600", "--horizon-h", "12", "--policy", "edf",
        "--solver-time-limit-s", "2", "--replan-deadline-s", "3", "--timezone", "Europe/Berlin",
        "--default-stay-h", "4", "--default-energy-kwh", "20",
    )  # fmt: skip
    assert got.step == timedelta(minutes=10)
    assert got.horizon == timedelta(hours=12)
    assert got.coarse_step == timedelta(minutes=30)  # 3 control intervals of 10 min
    assert got.fine_span == timedelta(hours=2)
    assert got.policy == "edf"
    assert got.solver_time_limit_s == 2.0 and got.deadline_s == 3.0
    assert got.timezone == "Europe/Berlin"
    assert got.defaults == Defaults(stay_h=4.0, energy_kwh=20.0)


def test_control_settings_defaults() -> None:
    got = settings_of()
    assert got.step == timedelta(minutes=5) and got.horizon == timedelta(hours=24)
    assert got.coarse_step == timedelta(minutes=30) and got.fine_span == timedelta(hours=2)
    assert got.policy == "milp" and got.solver_time_limit_s == 5.0 and got.deadline_s == 8.0
    assert got.defaults == Defaults()


@pytest.mark.parametrize(
    ("interval_s", "horizon_h", "coarse", "horizon", "fine_span"),
    [
        # 1800 / 420 = 4.3 -> 4 intervals of 7 min
        ("420", "24", timedelta(minutes=28), timedelta(hours=24), timedelta(hours=2)),
        # an interval of 30 min or more: no coarse steps; the horizon at least one interval
        ("3600", "0.5", None, timedelta(hours=1), timedelta(hours=2)),
        # an interval longer than the fine span: the fine span is one interval
        ("10800", "24", None, timedelta(hours=24), timedelta(hours=3)),
    ],
)
def test_control_settings_coarse_step_and_horizon(
    interval_s: str, horizon_h: str, coarse: timedelta | None, horizon: timedelta, fine_span: timedelta
) -> None:
    got = settings_of("--control-interval-s", interval_s, "--horizon-h", horizon_h)
    assert got.step == timedelta(seconds=float(interval_s))
    assert got.coarse_step == coarse
    assert got.horizon == horizon
    assert got.fine_span == fine_span


def test_no_control_gives_no_settings() -> None:
    assert settings_of("--no-control", "--policy", "edf") is None
