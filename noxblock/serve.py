"""``noxblock serve``: the OCPP 1.6J central system and the REST API in one asyncio loop.

``noxblock.cli`` wires it in with :func:`add_arguments` and :func:`run`. Scripts and tests use
:func:`start_services` (ports may be 0) and :meth:`Services.stop`.

Charge points in the site file are known (BootNotification ``Accepted``); others get
``--unknown`` (default ``Pending``). A point with a ``password`` in the site file must log in with
HTTP Basic auth; its password is kept only as a salted hash. Points without one connect
unauthenticated (security profile 0), which is allowed only when the site file has such points
or ``--allow-unauthenticated`` is given, with a warning. ``--tls-cert/--tls-key`` serve ``wss://``
(profile 2); ``--tls-client-ca`` also accepts client certificates whose common name is the charge
point id (profile 3). ``--ca-cert/--ca-key`` let the gateway sign the certificates points ask for
(SignCertificate). The handshake limits (lockouts after failed logins, new connections per address)
have options for what a site most often changes; the rest keep ``GatewayConfig``'s defaults. A bad
value exits with code 2 and a message naming the option.

Every point's failsafe profile is its share of the site file's limits (``models.failsafe``), at
most ``--failsafe-current-a``. The REST API also takes the site's grid-operator limits
(``PUT /api/v1/sites/{site}/limits``, bearer tokens from ``noxblock token create`` on the same
``--data-dir``; :mod:`noxblock.api_limits`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from noxblock.api import API_PREFIX, create_app
from noxblock.api_limits import add_access_routes
from noxblock.auth import open_stores
from noxblock.oscp import add_oscp_routes
from ocpp_gateway import Gateway, GatewayConfig, KnownChargePoint, SqliteStorage, hash_password
from ocpp_gateway.certificates import load_authority
from ocpp_gateway.errors import ConfigError
from ocpp_gateway.security import tls_server_context

__all__ = ["Services", "add_arguments", "build_config", "run", "start_services"]

log = logging.getLogger("noxblock.serve")

DB_NAME = "noxblock.sqlite"
#: Default of --max-plan-cells (EVs x steps): keeps a 1,000-point re-plan within seconds.
DEFAULT_MAX_PLAN_CELLS = 12_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``noxblock serve`` (the contract's, and security and failsafe ones)."""
    parser.add_argument("--site", required=True, help="site TOML: its charge points are the known ones")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="OCPP websocket port (default 9000)")
    parser.add_argument("--api-port", type=int, default=8000, help="REST API port (default 8000)")
    parser.add_argument(
        "--data-dir", default="./var", help="directory of the SQLite database (default ./var)"
    )
    parser.add_argument(
        "--unknown",
        choices=("Accepted", "Pending", "Rejected"),
        default="Pending",
        help="BootNotification answer for charge points not in the site file (default Pending)",
    )
    parser.add_argument(
        "--id-tags",
        choices=("any", "known"),
        default="any",
        help="which id tags Authorize and StartTransaction accept: any (the points or a roaming "
        "platform authorise drivers; default) or only those known to the store",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="let points without a password connect without credentials (security profile 0)",
    )
    parser.add_argument(
        "--failsafe-current-a",
        type=float,
        default=32.0,
        help="largest per-phase limit of the failsafe profiles installed at boot [A]; each point "
        "gets at most its share of the site's limits (0 where that is under its minimum); "
        "negative: none (default 32)",
    )
    parser.add_argument(
        "--heartbeat-interval", type=int, default=300, help="heartbeat interval [s] (default 300)"
    )
    parser.add_argument(
        "--oscp-token-env",
        default="NOXBLOCK_OSCP_TOKEN",
        help="environment variable holding the token the grid operator's OSCP 2.0 capacity provider "
        "sends (Authorization: Token ...); unset: no OSCP endpoints (default NOXBLOCK_OSCP_TOKEN)",
    )
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="optional config file: a [serve] table whose keys are these options' long names with"
        " underscores (control_interval_s = 300). Environment variables NOXBLOCK_<NAME> (e.g."
        " NOXBLOCK_CONTROL_INTERVAL_S) override it; the command line overrides both",
    )
    ctl = parser.add_argument_group("control loop (re-plans and dispatch)")
    ctl.add_argument(
        "--no-control", action="store_true", help="gateway and API only: no planning, no dispatch"
    )
    ctl.add_argument(
        "--control-interval-s",
        type=_positive_float,
        default=300.0,
        metavar="S",
        help="control interval: a re-plan every this many seconds, and at once on events [s] (default 300)",
    )
    ctl.add_argument(
        "--horizon-h",
        type=_positive_float,
        default=24.0,
        metavar="H",
        help="look-ahead of a plan [h] (default 24)",
    )
    ctl.add_argument(
        "--policy",
        choices=("milp", "edf", "llf", "equal-share"),
        default="milp",
        help="planning policy (default milp: the rolling-horizon MILP)",
    )
    ctl.add_argument(
        "--solver-time-limit-s",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="HiGHS time limit of one re-plan [s] (default 5)",
    )
    ctl.add_argument(
        "--replan-deadline-s",
        type=_positive_float,
        default=8.0,
        metavar="S",
        help="wall time a re-plan may take before EDF plans instead [s] (default 8)",
    )
    ctl.add_argument(
        "--max-plan-cells",
        type=_count,
        default=DEFAULT_MAX_PLAN_CELLS,
        metavar="N",
        help="most EVs x steps in a plan: with more EVs the steps ahead get longer "
        f"(default {DEFAULT_MAX_PLAN_CELLS}; 0: no limit)",
    )
    ctl.add_argument(
        "--timezone", default="UTC", help="the site's time zone (day types of forecasts; default UTC)"
    )
    ctl.add_argument(
        "--signals", metavar="CSV", help="price and CO2 signals (the simulate format) to plan with"
    )
    ctl.add_argument(
        "--default-stay-h",
        type=_positive_float,
        default=8.0,
        metavar="H",
        help="stay assumed when neither driver nor history tells [h] (default 8)",
    )
    ctl.add_argument(
        "--default-energy-kwh",
        type=_positive_float,
        default=15.0,
        metavar="KWH",
        help="energy assumed when neither driver nor history tells [kWh] (default 15)",
    )
    parser.add_argument("--tls-cert", help="server certificate (PEM): serve wss:// (security profile 2)")
    parser.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    parser.add_argument("--tls-client-ca", help="CA (PEM) for client certificates (security profile 3)")
    ca = parser.add_argument_group("certificate authority (security extension: SignCertificate)")
    ca.add_argument(
        "--ca-cert",
        metavar="PEM",
        help="CA certificate (PEM, then any parents) that signs charge point certificates; with --ca-key."
        " Without them every SignCertificate is answered Rejected",
    )
    ca.add_argument("--ca-key", metavar="PEM", help="unencrypted private key (PEM) of --ca-cert")
    ca.add_argument(
        "--certificate-lifetime-days",
        type=int,
        metavar="DAYS",
        default=_default("certificate_lifetime_days"),
        help="validity of an issued certificate [days], never beyond the CA's own (default %(default)s)",
    )
    limits = parser.add_argument_group("handshake limits (credential guessing, connection floods)")
    window = _default("lockout_window_s")
    limits.add_argument(
        "--lockout-failures",
        type=int,
        metavar="N",
        default=_default("lockout_failures"),
        help=f"failed authentications of one charge point id within {window:g} s after which its"
        " handshakes are refused for --lockout-s [count]; 0 = off (default %(default)s)",
    )
    limits.add_argument(
        "--lockout-s",
        type=float,
        metavar="S",
        default=_default("lockout_s"),
        help=f"length of a first lockout [s]; each one that follows soon after doubles, up to"
        f" {_default('lockout_max_s'):g} s or this (default %(default)g)",
    )
    limits.add_argument(
        "--ip-lockout-failures",
        type=int,
        metavar="N",
        default=_default("ip_lockout_failures"),
        help="the same per remote address (IPv6: per /64), over all ids [count]; 0 = off, for sites"
        " whose points share one NAT address (default %(default)s)",
    )
    limits.add_argument(
        "--handshake-rate-per-s",
        type=float,
        metavar="RATE",
        default=_default("handshake_rate_per_s"),
        help="new connections per remote address beyond which the handshake gets 429"
        " [connections/s]; 0 = off (default %(default)g)",
    )
    limits.add_argument(
        "--handshake-burst",
        type=int,
        metavar="N",
        default=_default("handshake_burst"),
        help="connections one address may open at once before --handshake-rate-per-s applies"
        " [connections] (default %(default)s)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


class ConfigFileError(Exception):
    """A bad config file or environment variable (exit code 2)."""


def config_defaults(
    parser: argparse.ArgumentParser, config_path: str | None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Option values from the config file's ``[serve]`` table and ``NOXBLOCK_<NAME>`` variables
    (environment over file), converted and checked like the command line's. Raises
    :class:`ConfigFileError` naming the file or variable and the key."""
    import tomllib

    environ = os.environ if environ is None else environ
    actions = {
        a.dest: a
        for a in parser._actions  # argparse has no public list of its options
        if a.option_strings and a.dest not in ("help", "config", "site")
    }
    values: dict[str, tuple[Any, str]] = {}
    if config_path:
        try:
            with open(config_path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigFileError(f"{config_path}: {e.strerror or e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigFileError(f"{config_path}: {e}") from e
        table = doc.get("serve", {})
        if not isinstance(table, dict):
            raise ConfigFileError(f"{config_path}: [serve] must be a table")
        for key, value in table.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                raise ConfigFileError(f"{config_path}: [serve] {key}: unknown option")
            values[dest] = (value, f"{config_path}: [serve] {key}")
    for dest in actions:
        name = f"NOXBLOCK_{dest.upper()}"
        if name in environ:
            values[dest] = (environ[name], f"environment variable {name}")
    out: dict[str, Any] = {}
    for dest, (raw, where) in values.items():
        action = actions[dest]
        try:
            if isinstance(action, argparse._StoreTrueAction):
                if isinstance(raw, bool):
                    value = raw
                elif str(raw).lower() in ("1", "true", "yes", "on"):
                    value = True
                elif str(raw).lower() in ("0", "false", "no", "off", ""):
                    value = False
                else:
                    raise ValueError(f"expected true or false, got {raw!r}")
            elif isinstance(raw, (dict, list)):
                raise ValueError(f"expected a single value, got {raw!r}")
            elif action.type is not None:
                value = action.type(str(raw))
            elif isinstance(raw, str):
                value = raw
            else:
                raise ValueError(f"expected a string, got {raw!r}")
            if action.choices is not None and value not in action.choices:
                raise ValueError(f"expected one of {', '.join(map(str, action.choices))}, got {raw!r}")
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ConfigFileError(f"{where}: {e}") from e
        out[dest] = value
    return out


def control_settings(args: argparse.Namespace) -> Any:
    """The control loop's settings from the options; None with ``--no-control``."""
    from datetime import timedelta

    from noxblock.live import ControlSettings, Defaults

    if getattr(args, "no_control", False):
        return None
    step = timedelta(seconds=args.control_interval_s)
    horizon = max(timedelta(hours=args.horizon_h), step)
    coarse = step * max(1, round(1800 / args.control_interval_s)) if args.control_interval_s < 1800 else None
    return ControlSettings(
        step=step,
        horizon=horizon,
        coarse_step=coarse,
        fine_span=max(timedelta(hours=2), step),
        policy=args.policy,
        solver_time_limit_s=args.solver_time_limit_s,
        deadline_s=args.replan_deadline_s,
        max_plan_cells=args.max_plan_cells if args.max_plan_cells > 0 else None,
        timezone=args.timezone,
        defaults=Defaults(stay_h=args.default_stay_h, energy_kwh=args.default_energy_kwh),
    )


#: The option that sets each ``GatewayConfig`` field, to name it in an error message.
_FLAGS = {
    "heartbeat_interval_s": "--heartbeat-interval",
    "failsafe_current_a": "--failsafe-current-a",
    "ca_cert_path": "--ca-cert",
    "ca_key_path": "--ca-key",
    "certificate_lifetime_days": "--certificate-lifetime-days",
    "lockout_failures": "--lockout-failures",
    "lockout_s": "--lockout-s",
    "lockout_max_s": "--lockout-s",  # must be at least lockout_s
    "ip_lockout_failures": "--ip-lockout-failures",
    "handshake_rate_per_s": "--handshake-rate-per-s",
    "handshake_burst": "--handshake-burst",
}


def _default(field: str) -> Any:
    """A ``GatewayConfig`` default, so that the options and the class cannot disagree."""
    return next(f.default for f in dataclasses.fields(GatewayConfig) if f.name == field)


def _hash_all(passwords: dict[str, str]) -> dict[str, str]:
    if not passwords:
        return {}
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # scrypt releases the GIL
        hashes = dict(zip(passwords, pool.map(hash_password, passwords.values()), strict=True))
    log.info("hashed %d charge point passwords in %.1f s", len(hashes), time.perf_counter() - t)
    return hashes


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert:
        return None
    return tls_server_context(args.tls_cert, args.tls_key, args.tls_client_ca or None)


def build_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway configuration from the site file and the options. Raises ``InputError`` for a bad file."""
    from scheduler.loaders import load_site

    loaded = load_site(args.site)
    hashes = _hash_all(dict(loaded.passwords))
    failsafe = _failsafe_currents_a(loaded)
    points = tuple(
        KnownChargePoint(
            cp.id,
            password_hash=hashes.get(cp.id),
            phases=cp.phases,
            max_current_a=cp.max_current_a,
            failsafe_current_a=failsafe[cp.id],
        )
        for cp in loaded.site.charge_points
    )
    open_points = [cp.id for cp in points if cp.password_hash is None]
    if open_points and not args.allow_unauthenticated:
        log.warning(
            "%d charge points have no password in %s (%s%s): security profile 0 allowed",
            len(open_points), args.site, ", ".join(open_points[:5]), ", ..." if len(open_points) > 5 else "",
        )  # fmt: skip
    for field, path in (("ca_cert_path", args.ca_cert), ("ca_key_path", args.ca_key)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(field, f"no such file: {path}")
    config = GatewayConfig(
        charge_points=points,
        unknown_policy=args.unknown,
        accept_unknown_id_tags=getattr(args, "id_tags", "any") == "any",
        allow_profile_0=bool(open_points) or args.allow_unauthenticated,
        heartbeat_interval_s=args.heartbeat_interval,
        voltage_v=float(loaded.site.voltage_v),
        failsafe_current_a=args.failsafe_current_a if args.failsafe_current_a >= 0 else None,
        ssl_context=_tls_context(args),
        ca_cert_path=args.ca_cert,
        ca_key_path=args.ca_key,
        certificate_lifetime_days=args.certificate_lifetime_days,
        lockout_failures=args.lockout_failures,
        lockout_s=args.lockout_s,
        # A longer first lockout than the default cap raises the cap with it.
        lockout_max_s=max(_default("lockout_max_s"), args.lockout_s),
        ip_lockout_failures=args.ip_lockout_failures,
        handshake_rate_per_s=args.handshake_rate_per_s,
        handshake_burst=args.handshake_burst,
    )
    # Read the CA now, so that unusable files stop the start with exit code 2, not a traceback.
    load_authority(config.ca_cert_path, config.ca_key_path, lifetime_days=config.certificate_lifetime_days)
    return config


def _failsafe_currents_a(loaded: Any) -> dict[str, float]:
    """Per point: the failsafe that keeps every limit of the site with every point at it, under
    the largest base load of the site file (``models.failsafe``)."""
    from models.failsafe import failsafe_currents_a
    from noxblock.live import base_load_max_a

    out = failsafe_currents_a(loaded.site, base_load_max_a(loaded.base_load))
    log.info(
        "failsafe profiles: %s",
        ", ".join(f"{cp} {a:g} A" for cp, a in list(out.items())[:8]) + (", ..." if len(out) > 8 else ""),
    )
    return out


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the serve loop owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Services:
    """A running gateway and REST API (see :func:`start_services`)."""

    gateway: Gateway
    api_port: int
    api_host: str
    _api: _Uvicorn
    _api_task: asyncio.Task[None]
    _stores: tuple[Any, ...] = ()
    control: Any | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}{API_PREFIX}"

    async def stop(self) -> None:
        """Stop planning, the API, then the gateway (connections closed, store committed and closed)."""
        if self.control is not None:
            await self.control.stop()
        self._api.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._api_task
        await self.gateway.stop()
        self.gateway.storage.close()
        for store in self._stores:
            store.close()


async def start_services(
    config: GatewayConfig,
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9000,
    api_port: int = 8000,
    site_id: str | None = None,
    oscp_token: str | None = None,
    site_config: Any | None = None,
    control: Any | None = None,
    clock: Any | None = None,
    signals: Any | None = None,
) -> Services:
    """Open the stores in ``data_dir``, start the OCPP server and the REST API (ports may be 0).

    With ``site_id`` the API also takes that site's grid-operator limits (bearer tokens from
    ``noxblock token create --data-dir`` the same directory; see :mod:`noxblock.api_limits`) and,
    with ``oscp_token`` too, OSCP 2.0 capacity forecasts under ``/oscp/fp/2.0/``
    (:mod:`noxblock.oscp`; its state in ``data_dir/oscp.json``).

    With ``site_config`` (``scheduler.loaders.load_site``) and ``control``
    (:class:`noxblock.live.ControlSettings`) the control loop runs too: it re-plans every control
    interval and on events, and dispatches through the gateway (:mod:`noxblock.live`). ``clock``
    (aware UTC ``now``) is the gateway's and the loop's: a simulated one for tests and the demo.
    """
    if site_config is not None and site_id is None:
        site_id = site_config.site.id
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    storage = SqliteStorage(Path(data_dir) / DB_NAME)
    gateway = Gateway(config, storage) if clock is None else Gateway(config, storage, clock=clock)
    await gateway.start(host, port)
    # Bind the API socket here, so its port is known (and connectable) before uvicorn runs.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, api_port))
    sock.listen(128)
    sock.setblocking(False)
    app = create_app(gateway)
    stores: tuple[Any, ...] = ()
    limits = oscp = None
    if site_id is not None:
        tokens, limits = open_stores(data_dir)
        add_access_routes(app, tokens, limits, {site_id: config.voltage_v})
        stores = (tokens, limits)
        if oscp_token:
            oscp = add_oscp_routes(
                app,
                limits,
                site_id=site_id,
                voltage_v=config.voltage_v,
                token=oscp_token,
                clock=gateway.clock,
                state_path=Path(data_dir) / "oscp.json",
            )
    ctl = None
    if site_config is not None and control is not None:
        from noxblock.api_live import add_live_routes
        from noxblock.live import Control

        ctl = Control(
            gateway, site_config, data_dir, settings=control, limits=limits, oscp=oscp, signals=signals
        )
        app.state.control = ctl
        add_live_routes(app, ctl, stores[0])
        from noxblock.dashboard import add_dashboard

        add_dashboard(app, ctl.site.id)
    server = _Uvicorn(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    services = Services(gateway, sock.getsockname()[1], host, server, task, stores, ctl)
    if ctl is not None:
        ctl.start()
    log.info("OCPP on %s, REST API on %s", gateway.url, services.api_url)
    return services


async def _serve(config: GatewayConfig, args: argparse.Namespace) -> None:
    from scheduler.loaders import load_site

    site_config = load_site(args.site)
    signals = None
    if args.signals:
        from scheduler.loaders import load_signals

        signals = load_signals(args.signals)
    services = await start_services(
        config,
        args.data_dir,
        host=args.host,
        port=args.port,
        api_port=args.api_port,
        site_id=site_config.site.id,
        oscp_token=os.environ.get(args.oscp_token_env) or None,
        site_config=site_config,
        control=control_settings(args),
        signals=signals,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    print(f"noxblock serve: OCPP {services.gateway.url}{{id}}  REST {services.api_url}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await services.stop()


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM. Exit 0 on a clean stop, 2 on a bad site file or options."""
    from scheduler.errors import InputError

    if bool(args.tls_cert) != bool(args.tls_key):
        print("noxblock serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if bool(args.ca_cert) != bool(args.ca_key):
        print("noxblock serve: --ca-cert and --ca-key go together", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
    except ConfigError as e:
        print(f"noxblock serve: {_FLAGS.get(e.field, e.field)}: {e.message}", file=sys.stderr)
        return 2
    except (InputError, OSError, ssl.SSLError, ValueError) as e:
        print(f"noxblock serve: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, args))
    except OSError as e:  # port in use, ...
        print(f"noxblock serve: {e}", file=sys.stderr)
        return 1
    return 0
