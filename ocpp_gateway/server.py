"""The one module that touches the websockets server (``websockets.asyncio.server``).

* Path ``/ocpp/{chargePointId}`` (anything else: 404); subprotocol ``ocpp1.6`` required (a client
  that does not offer it gets 400 at the handshake).
* Authentication in ``process_request``, before the upgrade: HTTP Basic (security profiles 1/2),
  or a client certificate whose common name is the charge point id (profile 3, mutual TLS when
  ``config.ssl_context`` requires client certificates). Refusal: 401, logged and recorded as a
  security event, never with the secret. websockets' own debug log prints request headers; a
  filter on its logger blanks ``Authorization``.
* Credential guessing and floods (:class:`~ocpp_gateway.security.HandshakeGuard`, limits in
  ``GatewayConfig``): first a token bucket of new connections per remote address (beyond it:
  429 with ``Retry-After``, logged at most once a minute per address); then, while a charge point
  id or a remote address is locked out after repeated failed authentications, 401 without
  checking the credentials (a client certificate that names the id still gets in). Each lockout
  is logged once (WARNING) and recorded as one ``AuthenticationLockout`` security event.
* ``max_size`` = ``config.max_frame_bytes`` (a bigger message closes with 1009), ping/pong
  keep-alive, no per-message compression (its zlib state would cost far more than the 50 KiB per
  connection we budget), a small receive queue.
* A new connection for an id replaces the old one (the gateway closes the old and fails its
  pending calls).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ocpp_gateway.config import CHARGE_POINT_ID_RE
from ocpp_gateway.errors import ConnectionLost
from ocpp_gateway.security import HandshakeGuard, Lockout

if TYPE_CHECKING:
    from ocpp_gateway.gateway import Gateway

__all__ = ["SUBPROTOCOL", "GatewayServer", "charge_point_id_from_path"]

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
_PREFIX = "/ocpp/"
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class _RedactSecrets(logging.Filter):
    """Blank secret header values in websockets' debug lines (``< Authorization: Basic ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True


_ws_logger = logging.getLogger("ocpp_gateway.websockets")
_ws_logger.addFilter(_RedactSecrets())


def charge_point_id_from_path(path: str) -> str | None:
    """The charge point id in ``/ocpp/{id}`` (percent-decoded, query dropped), or None."""
    path = path.split("?", 1)[0]
    if not path.startswith(_PREFIX):
        return None
    cp_id = unquote(path[len(_PREFIX) :])
    return cp_id if CHARGE_POINT_ID_RE.match(cp_id) else None


class _WsTransport:
    __slots__ = ("_ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as e:
            raise ConnectionLost(
                "?", f"connection closed ({e.rcvd.code if e.rcvd else 'no close frame'})"
            ) from e

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)


def _client_cert_cn(ws: ServerConnection) -> str | None:
    ssl_object = ws.transport.get_extra_info("ssl_object") if ws.transport else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class GatewayServer:
    """The websocket server of a :class:`~ocpp_gateway.gateway.Gateway`.

    ``guard`` (default: one built from the gateway's config) holds the lockouts and the handshake
    rate limit; tests pass one with a fake clock.
    """

    def __init__(self, gateway: Gateway, *, guard: HandshakeGuard | None = None) -> None:
        self.gateway = gateway
        self.guard = guard if guard is not None else HandshakeGuard.from_config(gateway.config)
        self._server: Server | None = None
        self._tls = gateway.config.ssl_context is not None

    async def start(self, host: str, port: int) -> None:
        cfg = self.gateway.config
        self._server = await serve(
            self._handler,
            host,
            port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._process_request,
            compression=None,
            max_size=cfg.max_frame_bytes,
            max_queue=4,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            close_timeout=5,
            ssl=cfg.ssl_context,
            logger=_ws_logger,
            # asyncio's default listen backlog (100) drops SYNs in a boot storm of thousands of
            # points, and each dropped SYN costs the point a 1 s retransmission (bench/ocpp_load.py).
            backlog=2048,
        )
        self.host = host
        log.info("OCPP 1.6J server on %s", self.url)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{'wss' if self._tls else 'ws'}://{host}:{self.port}{_PREFIX}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        remote = str(ws.remote_address[0]) if ws.remote_address else "?"
        throttled = self.guard.admit(remote)
        if throttled is not None:
            if throttled.report:
                log.warning(
                    "refusing new connections from %s: more than %g/s (burst %d), %d refused",
                    remote, self.guard.rate_per_s, self.guard.burst, throttled.refused,
                )  # fmt: skip
            response = ws.respond(429, "Too many connections\n")
            response.headers["Retry-After"] = str(max(1, math.ceil(throttled.retry_after_s)))
            return response
        cp_id = charge_point_id_from_path(request.path)
        if cp_id is None:
            return ws.respond(404, "Not found: connect to /ocpp/{chargePointId}\n")
        cn = _client_cert_cn(ws) if self.gateway.config.client_cert_must_match_id else None
        if cn != cp_id:  # a client certificate naming the id cannot be guessed: never locked out
            lock = self.guard.locked(cp_id, remote)
            if lock is not None:
                log.debug("[%s] refused from %s: %s %s locked out", cp_id, remote, lock.scope, lock.key)
                return self._unauthorized(ws)
        auth = await self.gateway.authenticate(
            cp_id, request.headers.get("Authorization"), client_cert_cn=cn, remote=remote
        )
        if not auth.ok:
            for lock in self.guard.failed(cp_id, remote):
                self._report_lockout(cp_id, remote, lock)
            return self._unauthorized(ws)
        self.guard.succeeded(cp_id)
        return None

    @staticmethod
    def _unauthorized(ws: ServerConnection) -> Response:
        """401 with a Basic challenge: the one answer to bad credentials and to a lockout alike."""
        response = ws.respond(401, "Unauthorized\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        return response

    def _report_lockout(self, cp_id: str, remote: str, lock: Lockout) -> None:
        """Log a lockout that just began (once) and record it as one security event."""
        what = (
            f"{lock.failures} failed authentications within {lock.window_s:g} s: "
            f"locked out for {lock.lock_s:g} s (lockout {lock.level})"
        )
        if lock.scope == "charge_point":
            info = f"charge point id {what}, last attempt from {remote}"
        else:
            info = f"remote address {lock.key} {what}, last attempt for this id"
        log.warning("[%s] %s", cp_id, info)
        self.gateway.record_security_event(cp_id, "AuthenticationLockout", info)

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cp_id = charge_point_id_from_path(ws.request.path)
        if cp_id is None:  # cannot happen: process_request refused it
            return
        conn = self.gateway.attach(cp_id, _WsTransport(ws))
        try:
            async for message in ws:
                try:
                    await self.gateway.receive(conn, message)
                except (ConnectionLost, asyncio.CancelledError):
                    raise
                except Exception:
                    # One point's message must never take the server (or this connection) down.
                    conn.log.exception("unexpected error handling a message")
        except ConnectionClosed as e:
            conn.log.info("connection closed: %s", e)
        except ConnectionLost:
            pass
        finally:
            self.gateway.detach(conn)
