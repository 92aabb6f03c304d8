"""Handshake limits: failed-authentication lockouts and the per-address rate limit.

Unit tests drive :class:`~ocpp_gateway.security.HandshakeGuard` with a fake clock; integration
tests run a real websocket server whose guard has a fake clock, so no test sleeps or times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from ocpp_helpers import basic_auth, gateway_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ocpp_gateway import ConfigError, Gateway, GatewayConfig, KnownChargePoint, SqliteStorage, hash_password
from ocpp_gateway.security import HandshakeGuard, address_key
from ocpp_gateway.server import GatewayServer

SECRET = "s3cret-Lamppost-Key-0001"
WRONG = "wrong-Guess-0000000001"


class FakeClock:
    """A monotonic clock that moves only when told [s]."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def guard(clock: FakeClock, **overrides: Any) -> HandshakeGuard:
    return HandshakeGuard(clock=clock, **overrides)


# --- the sans-I/O guard ------------------------------------------------------------------------


def test_lockout_after_n_failures_within_the_window() -> None:
    clock = FakeClock()
    g = guard(clock)
    for _ in range(4):
        assert g.failed("CP01", "10.0.0.1") == []
        assert g.locked("CP01", "10.0.0.1") is None
    (lock,) = g.failed("CP01", "10.0.0.1")
    assert (lock.scope, lock.key, lock.failures, lock.lock_s, lock.level) == (
        "charge_point",
        "CP01",
        5,
        300,
        1,
    )
    assert lock.until == clock.now + 300
    assert g.locked("CP01", "10.0.0.9") is not None  # the id is locked, from any address
    assert g.locked("CP02", "10.0.0.9") is None
    assert g.stats["lockouts"] == 1


def test_failures_spread_beyond_the_window_do_not_lock() -> None:
    clock = FakeClock()
    g = guard(clock)
    for _ in range(20):
        assert g.failed("CP01", "10.0.0.1") == []
        clock.advance(15.0)  # four failures per minute at most
    assert g.locked("CP01", "10.0.0.1") is None


def test_success_resets_the_count() -> None:
    clock = FakeClock()
    g = guard(clock)
    for _ in range(4):
        g.failed("CP01", "10.0.0.1")
    g.succeeded("CP01")
    for _ in range(4):
        assert g.failed("CP01", "10.0.0.1") == []
    assert g.locked("CP01", "10.0.0.1") is None


def test_lock_expires() -> None:
    clock = FakeClock()
    g = guard(clock, lock_s=30.0)
    for _ in range(5):
        g.failed("CP01", "10.0.0.1")
    clock.advance(29.9)
    assert g.locked("CP01", "10.0.0.1") is not None
    clock.advance(0.1)
    assert g.locked("CP01", "10.0.0.1") is None
    # The failures before the lockout were used up: it takes a full N again.
    for _ in range(4):
        assert g.failed("CP01", "10.0.0.1") == []


def test_repeated_lockouts_double_up_to_the_cap_and_are_forgiven_later() -> None:
    clock = FakeClock()
    g = guard(clock, lock_s=100.0, lock_max_s=350.0)

    def lock_out() -> float:
        locks = [lk for _ in range(5) for lk in g.failed("CP01", f"10.0.0.{clock.now % 200:.0f}")]
        assert len(locks) == 1
        clock.advance(locks[0].lock_s)  # wait it out
        return locks[0].lock_s

    assert [lock_out() for _ in range(4)] == [100.0, 200.0, 350.0, 350.0]
    clock.advance(350.0)  # quiet for lock_max_s after the last lockout ended: forgiven
    assert lock_out() == 100.0
    assert lock_out() == 200.0
    g.succeeded("CP01")  # a successful login forgives at once
    assert lock_out() == 100.0


def test_failures_during_a_lockout_neither_count_nor_lock_again() -> None:
    # Concurrent handshakes all passed the lock check before the first one failed.
    clock = FakeClock()
    g = guard(clock)
    began = [lk for _ in range(12) for lk in g.failed("CP01", "10.0.0.1")]
    assert len(began) == 1 and g.stats["lockouts"] == 1


def test_address_lockout_for_a_client_that_sprays_ids() -> None:
    clock = FakeClock()
    g = guard(clock)
    for i in range(19):
        assert g.failed(f"X{i}", "192.0.2.7") == []
    (lock,) = g.failed("X19", "192.0.2.7")
    assert (lock.scope, lock.key, lock.failures) == ("address", "192.0.2.7", 20)
    # Every id is refused from that address, none from another one.
    assert g.locked("CP01", "192.0.2.7") is not None
    assert g.locked("CP01", "192.0.2.8") is None
    # A success for an id does not clear the address.
    g.succeeded("CP01")
    assert g.locked("CP01", "192.0.2.7") is not None
    clock.advance(300.0)
    assert g.locked("CP01", "192.0.2.7") is None


def test_address_lockout_can_be_disabled() -> None:
    g = guard(FakeClock(), ip_max_failures=0, max_failures=0)
    for i in range(100):
        assert g.failed(f"X{i % 3}", "192.0.2.7") == []
    assert g.locked("X0", "192.0.2.7") is None


def test_address_key_groups_ipv6_by_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("?") == "?"


def test_handshake_token_bucket() -> None:
    clock = FakeClock()
    g = guard(clock, rate_per_s=2.0, burst=3)
    assert [g.admit("192.0.2.1") for _ in range(3)] == [None, None, None]
    refused = g.admit("192.0.2.1")
    assert refused is not None and refused.retry_after_s == pytest.approx(0.5) and refused.report
    again = g.admit("192.0.2.1")
    assert again is not None and not again.report  # reported once, not per refusal
    assert g.admit("192.0.2.2") is None  # another address has its own bucket
    clock.advance(0.5)
    assert g.admit("192.0.2.1") is None
    assert g.admit("192.0.2.1") is not None
    clock.advance(60.0)
    assert g.admit("192.0.2.1") is None  # refilled to the burst
    assert g.stats["throttled"] == 3


def test_handshake_rate_limit_disabled_with_zero() -> None:
    g = guard(FakeClock(), rate_per_s=0.0, burst=1)
    assert all(g.admit("192.0.2.1") is None for _ in range(10_000))
    assert g.tracked() == 0


def test_a_boot_storm_from_one_address_passes_the_default_limit() -> None:
    clock = FakeClock()
    g = guard(clock)
    admitted = 0
    for _ in range(5000):  # 5,000 points at 1,000 handshakes/s, faster than bench/ocpp_load.py
        admitted += g.admit("127.0.0.1") is None
        clock.advance(0.001)
    assert admitted == 5000


def test_memory_is_bounded_under_a_flood_of_random_ids_and_addresses() -> None:
    clock = FakeClock()
    g = guard(clock, max_entries=100, max_failures=2)
    for _ in range(2):
        g.failed("CP01", "198.51.100.1")
    assert g.locked("CP01", "198.51.100.1") is not None
    for i in range(5000):  # 50 times the cap
        remote = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        g.admit(remote)
        g.failed(f"R{i}", remote)  # one failure each: counted, never locked
        clock.advance(0.001)
    assert g.tracked() <= 5 * 100
    # Single failures live in their own table: the flood did not evict the lockout.
    assert g.locked("CP01", "198.51.100.2") is not None


def test_expired_entries_are_dropped() -> None:
    clock = FakeClock()
    g = guard(clock, rate_per_s=10.0, burst=10)
    for i in range(50):
        g.admit(f"10.0.0.{i}")
        g.failed(f"R{i}", f"10.0.0.{i}")
    assert g.tracked() == 150
    clock.advance(3600.0)
    g.admit("10.0.1.1")
    g.failed("R-new", "10.0.1.1")
    assert g.tracked() == 3  # the old entries went as the new ones came


def test_from_config_and_validation() -> None:
    config = GatewayConfig(lockout_failures=3, lockout_s=10.0, lockout_max_s=40.0, handshake_rate_per_s=0)
    g = HandshakeGuard.from_config(config, clock=FakeClock())
    assert [lk.lock_s for _ in range(3) for lk in g.failed("CP01", "10.0.0.1")] == [10.0]
    assert g.admit("10.0.0.1") is None
    assert g.tracked() == 2  # the id's lockout and the address's count; no bucket
    for bad in (
        {"lockout_failures": -1},
        {"lockout_s": 0.0},
        {"lockout_max_s": 10.0},  # below lockout_s
        {"handshake_burst": 0},
        {"handshake_rate_per_s": -1.0},
        {"handshake_max_tracked": 0},
        {"ip_lockout_window_s": float("inf")},
    ):
        with pytest.raises(ConfigError):
            GatewayConfig(**bad)


# --- over real websockets ----------------------------------------------------------------------

ServerFactory = Callable[..., Awaitable[tuple[Gateway, GatewayServer, FakeClock]]]


def secured_config(**overrides: Any) -> GatewayConfig:
    points = (
        KnownChargePoint("CP01", password_hash=hash_password(SECRET, log2_n=10)),
        KnownChargePoint("CP02"),
    )
    return gateway_config(**{"charge_points": points, "allow_profile_0": False, **overrides})


@pytest_asyncio.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """A gateway's websocket server whose guard runs on a fake clock."""
    started: list[tuple[Gateway, GatewayServer]] = []

    async def factory(config: GatewayConfig) -> tuple[Gateway, GatewayServer, FakeClock]:
        clock = FakeClock()
        gw = Gateway(config, SqliteStorage(tmp_path / f"gw{len(started)}.sqlite"))
        server = GatewayServer(gw, guard=HandshakeGuard.from_config(config, clock=clock))
        await server.start("127.0.0.1", 0)
        started.append((gw, server))
        return gw, server, clock

    yield factory
    for gw, server in started:
        await server.stop()
        await gw.stop()
        gw.storage.close()


async def status_of(url: str, **kwargs: Any) -> int:
    """The HTTP status of a handshake (101 if the websocket opened)."""
    try:
        async with connect(url, subprotocols=["ocpp1.6"], open_timeout=5, **kwargs):  # type: ignore[list-item]
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def events(gw: Gateway, cp_id: str, kind: str) -> list[str]:
    return [e.tech_info or "" for e in gw.storage.security_events(cp_id) if e.type == kind]


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    # The test's own client logs its request headers at DEBUG; that is not the server's doing.
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))


@pytest.mark.asyncio
async def test_lockout_refuses_even_the_right_password_until_it_ends(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw, server, clock = await make_server(secured_config())
    url = server.url + "CP01"
    for _ in range(5):
        assert await status_of(url, additional_headers=basic_auth("CP01", WRONG)) == 401
    assert await status_of(url, additional_headers=basic_auth("CP01", SECRET)) == 401  # locked
    assert await status_of(url, additional_headers=basic_auth("CP01", WRONG)) == 401
    # Refused without checking: no further AuthenticationFailed after the five.
    assert len(events(gw, "CP01", "AuthenticationFailed")) == 5
    (lockout,) = events(gw, "CP01", "AuthenticationLockout")
    assert "5 failed authentications" in lockout and "300 s" in lockout
    text = server_log(caplog)
    assert text.count("locked out for") == 1
    assert [r.levelno for r in caplog.records if "locked out for" in r.getMessage()] == [logging.WARNING]
    for secret in (SECRET, WRONG, basic_auth("CP01", SECRET)["Authorization"].split()[1]):
        assert secret not in text
        assert secret not in lockout

    clock.advance(300.0)
    assert await status_of(url, additional_headers=basic_auth("CP01", SECRET)) == 101
    assert server.guard.locked("CP01", "127.0.0.1") is None
    assert len(events(gw, "CP01", "AuthenticationLockout")) == 1


@pytest.mark.asyncio
async def test_concurrent_guesses_make_one_lockout(make_server: ServerFactory) -> None:
    gw, server, _ = await make_server(secured_config())
    headers = basic_auth("CP01", WRONG)
    statuses = await asyncio.gather(
        *(status_of(server.url + "CP01", additional_headers=headers) for _ in range(12))
    )
    assert set(statuses) == {401}
    assert len(events(gw, "CP01", "AuthenticationLockout")) == 1


@pytest.mark.asyncio
async def test_successful_login_resets_the_count(make_server: ServerFactory) -> None:
    gw, server, _ = await make_server(secured_config())
    url = server.url + "CP01"
    for _ in range(3):
        for _ in range(4):
            assert await status_of(url, additional_headers=basic_auth("CP01", WRONG)) == 401
        assert await status_of(url, additional_headers=basic_auth("CP01", SECRET)) == 101
    assert events(gw, "CP01", "AuthenticationLockout") == []


@pytest.mark.asyncio
async def test_address_spraying_ids_is_locked_out(make_server: ServerFactory, caplog) -> None:
    caplog.set_level(logging.WARNING)
    gw, server, clock = await make_server(secured_config(ip_lockout_failures=4, lockout_failures=0))
    for i in range(4):
        assert (
            await status_of(server.url + f"SPRAY{i}", additional_headers=basic_auth(f"SPRAY{i}", WRONG))
            == 401
        )
    assert await status_of(server.url + "CP01", additional_headers=basic_auth("CP01", SECRET)) == 401
    (info,) = events(gw, "SPRAY3", "AuthenticationLockout")
    assert "remote address 127.0.0.1" in info
    assert server_log(caplog).count("locked out for") == 1
    clock.advance(300.0)
    assert await status_of(server.url + "CP01", additional_headers=basic_auth("CP01", SECRET)) == 101


@pytest.mark.asyncio
async def test_handshake_rate_limit_answers_429_with_retry_after(make_server: ServerFactory, caplog) -> None:
    caplog.set_level(logging.WARNING)
    _, server, clock = await make_server(gateway_config(handshake_rate_per_s=0.5, handshake_burst=2))
    url = server.url + "CP01"
    assert [await status_of(url), await status_of(url)] == [101, 101]
    with pytest.raises(InvalidStatus) as e:
        async with connect(url, subprotocols=["ocpp1.6"], open_timeout=5):  # type: ignore[list-item]
            pass
    assert e.value.response.status_code == 429
    assert e.value.response.headers["Retry-After"] == "2"
    assert await status_of(server.url + "bad%2Fid") == 429  # counted before the path is looked at
    assert server_log(caplog).count("refusing new connections from 127.0.0.1") == 1
    clock.advance(2.0)
    assert await status_of(url) == 101


@pytest.mark.asyncio
async def test_default_limits_let_a_boot_storm_from_one_host_in(make_gateway) -> None:
    # Through Gateway.start, so the default guard (real clock) built from the config is the one used.
    gw = await make_gateway()
    ids = [f"STORM{i:03d}" for i in range(300)]
    sem = asyncio.Semaphore(100)

    async def one(cp_id: str) -> int:
        async with sem:
            return await status_of(gw.url + cp_id)

    assert set(await asyncio.gather(*(one(i) for i in ids))) == {101}


@pytest.mark.asyncio
async def test_client_certificate_gets_in_during_a_lockout(make_server: ServerFactory, pki: Path) -> None:
    import ssl

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    server_ctx.load_verify_locations(pki / "ca.pem")
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with_cert.load_cert_chain(pki / "client.pem", pki / "client.key")
    _, server, _ = await make_server(secured_config(ssl_context=server_ctx))
    url = server.url + "CP01"
    for _ in range(5):
        assert await status_of(url, ssl=no_cert, additional_headers=basic_auth("CP01", WRONG)) == 401
    assert await status_of(url, ssl=no_cert, additional_headers=basic_auth("CP01", SECRET)) == 401
    assert await status_of(url, ssl=with_cert) == 101  # the certificate's common name is CP01
