"""OCPP load benchmark: many charge points against one gateway process, and a bare echo server.

The gateway runs in its own process (``noxblock.serve.start_services``: OCPP server, REST API,
SQLite store in a temporary directory, every point known, the default failsafe profile installed
at each boot). The charge points are a light raw-websocket load generator (not the full
simulator) spread over ``--clients`` processes, so the server's core is its own. Security profile
0 by default (no credentials); ``--security-profile 1`` adds HTTP Basic auth (a scrypt check per
point on its first connection; cached after that).

Phases, each reported on its own line:

1. **boot storm**: all points connect at once (at most ``--concurrency`` handshakes in flight per
   client process) and send BootNotification; done when every point is Accepted and has answered
   the failsafe commands the gateway sends after a boot (GetConfiguration, SetChargingProfile).
   Server RSS (``/proc/<pid>/status`` VmRSS) before and after gives the memory per point.
2. **echo connections**: the same points connect to a bare ``websockets`` echo server (same
   options, own process, started with the gateway), which stays idle until phase 4.
3. **target rate**: an open-loop mix of Heartbeat and MeterValues (5 sampled values) at
   ``--rate`` calls/s over all points, one call in flight per point: p50/p99 round trip.
4. **max rate against the echo ceiling**: closed loop, ``--window`` calls in flight in total, the
   same calls from the same client processes, alternately against the gateway and the echo server
   (``--rounds`` pairs in the order G E, E G, G E, ...; each phase ``--max-duration`` seconds after
   ``--warmup`` seconds that are not counted). The gateway's and the echo's figures are the medians
   of their phases; the share of echo is the median of the per-round ratios, each from two phases
   run back to back, so that a neighbour's load on a shared machine hits both sides alike. The
   server CPU per call (``/proc/<pid>/stat``) of both is reported too, and the load of other
   processes and the hypervisor's steal time during the phases: figures taken under load are low.

Both sides get exactly the same client work per call: the client recognises its answer by the
unique id at a fixed place in the frame (``[3,"id",...`` from the gateway, the echoed
``[2,"id",...``) without parsing the JSON (it parses only what it does not recognise: commands
from the central system, answers during the boot storm). In the max-rate phases each server
process runs on CPU 0, the client processes on the other CPUs (``--no-pin`` lets the OS place
them): left to itself, the scheduler sometimes put the echo server where it ran 1.5x faster than
in other runs, for a whole run, while the gateway's figure hardly moved. (Pinning reduces that,
it does not remove it.)

Usage::

    .venv/bin/python bench/ocpp_load.py [--points 5000] [--rate 2000] [--duration 10] [--rounds 5]
        [--max-duration 5] [--clients 2] [--security-profile 0|1] [--profile-server] [--skip-echo]
        [--no-pin]

Targets (issue #4, this 2-core machine): 5,000 points; boot storm <= 30 s; 2,000 calls/s with
p99 <= 100 ms; >= 50 % of the echo throughput; <= 50 KiB per point. The last line is one JSON
object: ``{"points", "connect_s", "calls_per_s", "p50_ms", "p99_ms", "echo_calls_per_s",
"kib_per_point", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from random import randbytes
from typing import Any

import numpy as np

SUBPROTOCOL = "ocpp1.6"
PASSWORD = "bench-secret-0123456789"
_CS_ANSWERS: dict[str, dict[str, Any]] = {
    "GetConfiguration": {
        "configurationKey": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Current"},
            {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "24"},
        ]
    },
    "GetCompositeSchedule": {"status": "Rejected"},
}


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def point_id(i: int) -> str:
    return f"B{i:05d}"


# --- server processes --------------------------------------------------------------------------
def gateway_process(conn: Connection, n_points: int, profile: int, data_dir: str, cprofile: bool) -> None:
    raise_nofile()
    logging.basicConfig(
        filename=os.path.join(data_dir, "gateway.log"),
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from noxblock.serve import start_services
    from ocpp_gateway import GatewayConfig, KnownChargePoint, hash_password

    password_hash = hash_password(PASSWORD) if profile == 1 else None
    config = GatewayConfig(
        charge_points=tuple(
            KnownChargePoint(point_id(i), password_hash=password_hash) for i in range(n_points)
        ),
        allow_profile_0=profile == 0,
        heartbeat_interval_s=3600,
        rate_limit_per_s=50.0,
    )

    async def main() -> None:
        services = await start_services(config, data_dir, port=0, api_port=0)
        conn.send(("ready", services.gateway.port))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        stats = dict(services.gateway.stats)
        await services.stop()
        conn.send(("stopped", stats))

    if cprofile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(main())
        prof.disable()
        out = os.path.join(data_dir, "gateway.pstats")
        prof.dump_stats(out)
        pstats.Stats(out, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    else:
        asyncio.run(main())


def echo_process(conn: Connection) -> None:
    raise_nofile()
    from websockets.asyncio.server import serve

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(
            echo, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL], compression=None, max_queue=4, ping_interval=60
        ) as server:
            conn.send(("ready", server.sockets[0].getsockname()[1]))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        conn.send(("stopped", {}))

    asyncio.run(main())


# --- load generator ------------------------------------------------------------------------------
# A minimal websocket client on asyncio.Protocol (RFC 6455 framing, masking in websockets' C
# speedup): no task or future per message, so that one client core drives far more calls than the
# server under test can answer, and the numbers measure the server.
try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - pure-Python fallback

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class _Conn(asyncio.Protocol):
    __slots__ = (
        "buf", "client", "cp_id", "cs_calls", "handshake", "n", "open", "sent_at", "transport", "uid",
        "uid_q", "waiter",
    )  # fmt: skip

    def __init__(self, client: LoadClient, cp_id: str) -> None:
        self.client = client
        self.cp_id = cp_id
        self.buf = b""
        self.open = False
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.uid: str | None = None
        self.uid_q: bytes | None = None  # b'"<uid>"', as it appears in the answer
        self.sent_at = 0.0
        self.n = 0
        self.cs_calls = 0
        self.waiter: asyncio.Future[Any] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.client.path}{self.cp_id} HTTP/1.1",
            f"Host: {self.client.host}:{self.client.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
        ]
        if self.client.password is not None:
            token = base64.b64encode(f"{self.cp_id}:{self.client.password}".encode()).decode()
            lines.append(f"Authorization: Basic {token}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        self.client.lost += 1

    def write_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = randbytes(4)  # no syscall per frame (a load generator needs no unpredictable masks)
        self.transport.write(header + mask + apply_mask(payload, mask))

    def send_text(self, text: str) -> None:
        self.write_frame(0x1, text.encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[:end].split(b"\r\n", 1)[0]
            buf = buf[end + 4 :]
            if b" 101 " not in status:
                self.handshake.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            self.open = True
            self.handshake.set_result(None)
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                break
            payload, buf = buf[pos : pos + n], buf[pos + n :]
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.client.on_text(self, payload)
            elif opcode == 0x9:
                self.write_frame(0xA, payload)  # pong
            elif opcode == 0x8:
                self.transport.close()
        self.buf = buf


_MV = (
    '[2,"%s","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"%s","sampledValue":['
    '{"value":"%d","measurand":"Energy.Active.Import.Register","unit":"Wh"},'
    '{"value":"16.0","measurand":"Current.Import","phase":"L1","unit":"A"},'
    '{"value":"16.0","measurand":"Current.Import","phase":"L2","unit":"A"},'
    '{"value":"16.0","measurand":"Current.Import","phase":"L3","unit":"A"},'
    '{"value":"11040","measurand":"Power.Active.Import","unit":"W"}]}]}]'
)
_HB = '[2,"%s","Heartbeat",{}]'


class LoadClient:
    """One client process's connections to one server: its share of the points and their traffic."""

    def __init__(self, url: str, ids: list[str], password: str | None, concurrency: int) -> None:
        rest = url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        self.host, _, port = hostport.rpartition(":")
        self.port = int(port)
        self.path = "/" + path
        self.ids = ids
        self.conns: list[_Conn] = []
        self.password = password
        self.concurrency = concurrency
        self.latencies: list[float] | None = None
        self.completed = 0
        self.errors = 0
        self.lost = 0
        self.closed_loop = False
        # FIFO, so that the open loop spreads its calls over all points (a LIFO list reused the few
        # points answered last: each then sent far above the gateway's per-point rate limit).
        self.idle: deque[_Conn] = deque()
        self._base_s = int(time.time())

    def _text(self, c: _Conn, uid: str) -> str:
        """Alternately a Heartbeat and a MeterValues (5 values, a new timestamp each time)."""
        if c.n % 2:
            return _HB % uid
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self._base_s + c.n))
        return _MV % (uid, stamp, 1000 + c.n)

    def send(self, c: _Conn, action: str | None = None, payload: dict[str, Any] | None = None) -> None:
        c.n += 1
        if action is None or payload is None:
            uid = f"{c.cp_id}.{c.n}"
            text = self._text(c, uid)
        else:
            uid = f"{c.cp_id}.{c.n}.{action[0]}"
            text = json.dumps([2, uid, action, payload], separators=(",", ":"))
        c.uid = uid
        c.uid_q = f'"{uid}"'.encode()
        c.sent_at = time.perf_counter()
        c.send_text(text)

    def on_text(self, c: _Conn, data: bytes) -> None:
        # Our answer ([3,"id",... or [4,"id",...) or the echo of our CALL ([2,"id",...): found by its
        # id at a fixed place, the same cheap test for the gateway and the echo server.
        mine = c.uid_q is not None and data.startswith(c.uid_q, 3)
        if not mine or c.waiter is not None:
            frame = json.loads(data)
            mine = c.uid is not None and frame[1] == c.uid
            if not mine:
                if frame[0] == 2:  # a command from the central system
                    c.cs_calls += 1
                    answer = _CS_ANSWERS.get(frame[2], {"status": "Accepted"})
                    c.send_text(json.dumps([3, frame[1], answer], separators=(",", ":")))
                return
            if c.waiter is not None:
                c.uid = c.uid_q = None
                waiter, c.waiter = c.waiter, None
                waiter.set_result(frame)
                return
        now = time.perf_counter()
        c.uid = c.uid_q = None
        if data[1] == 0x34:  # "4": CALLERROR
            self.errors += 1
        self.completed += 1
        if self.latencies is not None:
            self.latencies.append(now - c.sent_at)
        if self.closed_loop:
            self.send(c)
        else:
            self.idle.append(c)

    async def connect_all(self, expect_cs_calls: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.concurrency)
        refused = 0
        failed = 0

        async def one(cp_id: str) -> None:
            nonlocal refused, failed
            async with sem:
                for attempt in range(10):
                    try:
                        _, c = await loop.create_connection(lambda: _Conn(self, cp_id), self.host, self.port)
                        await c.handshake
                        break
                    except (OSError, ConnectionError):
                        await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    failed += 1
                    return
                c.waiter = loop.create_future()
                self.send(c, "BootNotification", {"chargePointVendor": "bench", "chargePointModel": "load"})
                frame = await c.waiter
            self.conns.append(c)
            payload = frame[2] if frame[0] == 3 else {}
            if isinstance(payload, dict) and payload.get("status") not in (None, "Accepted"):
                refused += 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in self.ids))
        booted = time.monotonic()
        while any(c.cs_calls < expect_cs_calls for c in self.conns) and time.monotonic() - booted < 120:
            await asyncio.sleep(0.05)
        self.idle = deque(self.conns)
        return {
            "t0": t0,
            "booted": booted,
            "settled": time.monotonic(),
            "refused": refused + failed,
            "cs_calls": sum(c.cs_calls for c in self.conns),
        }

    async def run_target(self, rate: float, duration_s: float) -> dict[str, Any]:
        self.latencies, self.completed, self.closed_loop = [], 0, False
        skipped, sent, credit = 0, 0, 0.0
        t0 = last = time.perf_counter()
        while (now := time.perf_counter()) - t0 < duration_s:
            credit += (now - last) * rate
            last = now
            while credit >= 1.0:
                credit -= 1.0
                if not self.idle:
                    skipped += 1  # every point still waits for its answer: the server lags
                    continue
                self.send(self.idle.popleft())
                sent += 1
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        deadline = time.perf_counter() + 10
        while self.completed < sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        lat, self.latencies = self.latencies, None
        return {"sent": sent, "completed": self.completed, "skipped": skipped, "elapsed": elapsed, "lat": lat}

    async def run_max(self, window: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
        """Closed loop: ``warmup_s`` not counted, then ``duration_s`` counted; then drain."""
        self.latencies, self.completed, self.closed_loop = None, 0, True
        starters = [self.idle.popleft() for _ in range(min(window, len(self.idle)))]
        cpu0 = time.process_time()
        for c in starters:
            self.send(c)
        await asyncio.sleep(warmup_s)
        self.latencies, counted_from, t0 = [], self.completed, time.perf_counter()
        await asyncio.sleep(duration_s)
        done, elapsed = self.completed - counted_from, time.perf_counter() - t0
        lat, self.latencies = self.latencies, None
        self.closed_loop = False
        deadline = time.perf_counter() + 10
        while any(c.uid is not None for c in starters) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        self.idle.extend(c for c in starters if c.uid is None)
        return {
            "completed": done,
            "elapsed": elapsed,
            "lat": lat,
            "completed_all": self.completed,  # warm-up and drain included: for the CPU per call
            "client_cpu_s": time.process_time() - cpu0,
        }

    async def close(self) -> None:
        for c in self.conns:
            if c.open:
                c.write_frame(0x8, (1000).to_bytes(2, "big"))
                c.transport.close()
        await asyncio.sleep(0.2)


def client_process(
    conn: Connection, urls: dict[str, str], ids: list[str], password: str | None, concurrency: int
) -> None:
    raise_nofile()

    async def main() -> None:
        clients = {
            name: LoadClient(url, ids, password if name == "gateway" else None, concurrency)
            for name, url in urls.items()
        }
        loop = asyncio.get_running_loop()
        while True:
            cmd, name, args = await loop.run_in_executor(None, conn.recv)
            if cmd == "connect":
                conn.send(await clients[name].connect_all(*args))
            elif cmd == "target":
                conn.send(await clients[name].run_target(*args))
            elif cmd == "max":
                conn.send(await clients[name].run_max(*args))
            elif cmd == "close":
                for client in clients.values():
                    await client.close()
                conn.send({})
                return

    asyncio.run(main())


# --- orchestration -------------------------------------------------------------------------------
class Run:
    def __init__(self, ctx: Any, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.args = args

    @staticmethod
    def pin(pids: list[int], cpus: set[int]) -> None:
        """Run every thread of these processes on ``cpus`` only."""
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                    os.sched_setaffinity(int(tid), cpus)

    def start_server(self, target: Any, *args: Any) -> tuple[Any, Connection, int]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(child, *args), daemon=True)
        proc.start()
        msg, port = parent.recv()
        assert msg == "ready"
        return proc, parent, port

    def start_clients(self, urls: dict[str, str], password: str | None) -> list[tuple[Any, Connection]]:
        a = self.args
        ids = [point_id(i) for i in range(a.points)]
        clients = []
        for k in range(a.clients):
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=client_process,
                args=(child, urls, ids[k :: a.clients], password, max(1, a.concurrency // a.clients)),
                daemon=True,
            )
            proc.start()
            clients.append((proc, parent))
        return clients

    @staticmethod
    def ask(clients: list[tuple[Any, Connection]], cmd: str, name: str, *args: Any) -> list[dict[str, Any]]:
        for _, c in clients:
            c.send((cmd, name, args))
        return [c.recv() for _, c in clients]

    @staticmethod
    def stop_server(proc: Any, conn: Connection) -> dict[str, Any]:
        conn.send("stop")
        _, stats = conn.recv()
        proc.join(30)
        return stats


def pct(lat: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(lat) * 1000.0, q)) if lat else float("nan")


def busy_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy (all processes, all cores), and stolen by the
    hypervisor, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:3]) + fields[5] + fields[6]  # user, nice, system, irq, softirq
    return busy / os.sysconf("SC_CLK_TCK"), fields[7] / os.sysconf("SC_CLK_TCK")


def max_phase(run: Run, clients: list[tuple[Any, Connection]], name: str, pid: int) -> dict[str, Any]:
    """One closed-loop max-rate phase against ``name``: throughput, latency, server CPU per call."""
    a = run.args
    cpu0, (busy0, steal0) = cpu_s(pid), busy_cpu_s()
    res = run.ask(clients, "max", name, a.window // a.clients, a.warmup, a.max_duration)
    server_cpu = cpu_s(pid) - cpu0
    client_cpu = sum(r["client_cpu_s"] for r in res)
    busy, steal = (x - x0 for x, x0 in zip(busy_cpu_s(), (busy0, steal0), strict=True))
    elapsed = max(r["elapsed"] for r in res)
    calls_all = sum(r["completed_all"] for r in res)
    lat = [x for r in res for x in r["lat"]]
    wall = a.warmup + a.max_duration  # about: drain adds a little
    return {
        "calls_per_s": sum(r["completed"] for r in res) / elapsed,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "server_cpu_us_per_call": server_cpu / calls_all * 1e6 if calls_all else float("nan"),
        "client_cpu_us_per_call": client_cpu / calls_all * 1e6 if calls_all else float("nan"),
        # Cores busy with anything else than this phase's server and clients (a neighbour's load).
        "other_cores": max(0.0, (busy - server_cpu - client_cpu) / wall),
        "steal_cores": steal / wall,  # the hypervisor gave our cores to someone else
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=5000, help="simulated charge points (default 5000)")
    ap.add_argument("--rate", type=float, default=2000.0, help="target OCPP calls/s (default 2000)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds at the target rate (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="gateway/echo max-rate pairs (default 5)")
    ap.add_argument("--max-duration", type=float, default=5.0, help="seconds per max phase (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per max phase (default 1)")
    ap.add_argument("--window", type=int, default=200, help="calls in flight in the max-rate phases")
    ap.add_argument("--clients", type=int, default=2, help="load-generator processes (default 2)")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight, all clients")
    ap.add_argument("--security-profile", type=int, choices=(0, 1), default=0, help="0 (default) or 1")
    ap.add_argument("--profile-server", action="store_true", help="cProfile the gateway, print to stderr")
    ap.add_argument("--skip-echo", action="store_true", help="do not run the echo ceiling")
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the OS place the processes in the max-rate phases (default: each server on CPU 0,"
        " the clients on the other CPUs, so that the gateway and the echo server get the same core)",
    )
    a = ap.parse_args(argv)
    a.pin = (
        a.pin
        and hasattr(os, "sched_setaffinity")
        and len(os.sched_getaffinity(0)) >= 2
        and 0 in (os.sched_getaffinity(0))
    )
    nofile = raise_nofile()
    if nofile < 2 * a.points + 100:
        print(f"open-file limit {nofile} is below 2 x {a.points} connections", file=sys.stderr)
        return 2
    ctx = mp.get_context("spawn")
    run = Run(ctx, a)
    password = PASSWORD if a.security_profile == 1 else None
    out: dict[str, Any] = {"points": a.points, "security_profile": a.security_profile}

    with tempfile.TemporaryDirectory(prefix="ocpp-load-") as data_dir:
        proc, conn, port = run.start_server(
            gateway_process, a.points, a.security_profile, data_dir, a.profile_server
        )
        urls = {"gateway": f"ws://127.0.0.1:{port}/ocpp/"}
        if not a.skip_echo:
            echo_proc, echo_conn, echo_port = run.start_server(echo_process)
            urls["echo"] = f"ws://127.0.0.1:{echo_port}/ocpp/"
        time.sleep(0.5)
        rss0 = rss_kib(proc.pid)
        clients = run.start_clients(urls, password)
        res = run.ask(clients, "connect", "gateway", 2)
        connect_s = max(r["booted"] for r in res) - min(r["t0"] for r in res)
        settled_s = max(r["settled"] for r in res) - min(r["t0"] for r in res)
        refused = sum(r["refused"] for r in res)
        time.sleep(0.5)
        rss1 = rss_kib(proc.pid)
        kib = (rss1 - rss0) / a.points
        print(
            f"boot storm: {a.points} points booted in {connect_s:.1f} s"
            f" (failsafe profiles in {settled_s:.1f} s), {refused} not accepted;"
            f" server RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB = {kib:.1f} KiB/point",
            flush=True,
        )
        out |= {
            "connect_s": round(connect_s, 2),
            "failsafe_s": round(settled_s, 2),
            "kib_per_point": round(kib, 1),
        }

        if not a.skip_echo:
            echo_rss0 = rss_kib(echo_proc.pid)
            res = run.ask(clients, "connect", "echo", 0)
            echo_connect = max(r["booted"] for r in res) - min(r["t0"] for r in res)
            echo_kib = (rss_kib(echo_proc.pid) - echo_rss0) / a.points
            out |= {"echo_connect_s": round(echo_connect, 2), "echo_kib_per_point": round(echo_kib, 1)}
            print(
                f"echo server: {a.points} connections in {echo_connect:.1f} s, {echo_kib:.1f} KiB/connection",
                flush=True,
            )

        cpu0 = cpu_s(proc.pid)
        res = run.ask(clients, "target", "gateway", a.rate / a.clients, a.duration)
        cpu_target = cpu_s(proc.pid) - cpu0
        lat = [x for r in res for x in r["lat"]]
        elapsed = max(r["elapsed"] for r in res)
        achieved = sum(r["completed"] for r in res) / elapsed
        skipped = sum(r["skipped"] for r in res)
        out |= {
            "target_rate": a.rate,
            "achieved_rate": round(achieved, 1),
            "p50_ms": round(pct(lat, 50), 2),
            "p99_ms": round(pct(lat, 99), 2),
            "server_cpu_at_target": round(cpu_target / elapsed, 2),
        }
        print(
            f"target {a.rate:.0f}/s: achieved {achieved:.0f}/s, p50 {pct(lat, 50):.1f} ms,"
            f" p99 {pct(lat, 99):.1f} ms, max {pct(lat, 100):.1f} ms, {skipped} skipped;"
            f" server CPU {cpu_target / elapsed:.0%}",
            flush=True,
        )

        # Max rate: gateway and echo alternately (G E, E G, G E, ...), each round a pair back to back.
        pids = {"gateway": proc.pid} | ({} if a.skip_echo else {"echo": echo_proc.pid})
        all_cpus = os.sched_getaffinity(0)
        if a.pin:
            run.pin(list(pids.values()), {0})
            run.pin([p.pid for p, _ in clients], all_cpus - {0})
        phases: dict[str, list[dict[str, Any]]] = {name: [] for name in pids}
        ratios = []
        for r in range(a.rounds):
            order = list(pids) if r % 2 == 0 else list(reversed(pids))
            for name in order:
                m = max_phase(run, clients, name, pids[name])
                phases[name].append(m)
                print(
                    f"max rate, round {r + 1}, {name:7s} ({a.window} in flight):"
                    f" {m['calls_per_s']:.0f} calls/s, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms;"
                    f" server {m['server_cpu_us_per_call']:.0f} us CPU/call,"
                    f" clients {m['client_cpu_us_per_call']:.0f} us/call,"
                    f" other load {m['other_cores']:.2f} cores, steal {m['steal_cores']:.2f}",
                    flush=True,
                )
            if "echo" in phases:
                ratios.append(phases["gateway"][-1]["calls_per_s"] / phases["echo"][-1]["calls_per_s"])

        def med(name: str, key: str) -> float:
            return float(np.median([m[key] for m in phases[name]]))

        out |= {
            "calls_per_s": round(med("gateway", "calls_per_s"), 1),
            "max_p50_ms": round(med("gateway", "p50_ms"), 2),
            "max_p99_ms": round(med("gateway", "p99_ms"), 2),
            "server_cpu_us_per_call": round(med("gateway", "server_cpu_us_per_call"), 1),
            "calls_per_s_rounds": [round(m["calls_per_s"], 1) for m in phases["gateway"]],
        }
        if a.pin:
            run.pin([*pids.values(), *(p.pid for p, _ in clients)], all_cpus)
        Run.ask(clients, "close", "")
        for p, _ in clients:
            p.join(10)
        stats = run.stop_server(proc, conn)
        out["server_messages"] = stats.get("messages")
        out["server_throttled"] = stats.get("throttled")
        with open(os.path.join(data_dir, "gateway.log")) as f:
            out["server_log_lines"] = sum(1 for _ in f)
        if not a.skip_echo:
            run.stop_server(echo_proc, echo_conn)
            share = float(np.median(ratios))
            cpu_share = med("echo", "server_cpu_us_per_call") / med("gateway", "server_cpu_us_per_call")
            out |= {
                "echo_calls_per_s": round(med("echo", "calls_per_s"), 1),
                "echo_calls_per_s_rounds": [round(m["calls_per_s"], 1) for m in phases["echo"]],
                "echo_cpu_us_per_call": round(med("echo", "server_cpu_us_per_call"), 1),
                "share_of_echo": round(share, 3),
                "share_of_echo_rounds": [round(x, 3) for x in ratios],
                "cpu_share_of_echo": round(cpu_share, 3),
            }
            print(
                f"max rate, medians of {a.rounds} rounds: gateway {out['calls_per_s']:.0f} calls/s,"
                f" echo {out['echo_calls_per_s']:.0f} calls/s; the gateway reaches {share:.0%} of the echo"
                f" (per round {', '.join(f'{x:.0%}' for x in ratios)}); server CPU per call"
                f" {out['server_cpu_us_per_call']:.0f} us vs {out['echo_cpu_us_per_call']:.0f} us"
                f" ({cpu_share:.0%})",
                flush=True,
            )
        for key in ("other_cores", "steal_cores"):
            out[f"{key.removesuffix('_cores')}_load_cores"] = round(
                float(np.median([m[key] for ms in phases.values() for m in ms])), 2
            )
    out["machine"] = f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}"
    # The machine may be shared: a load average above the core count means the figures are low.
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
