"""OSCP 2.0 Flexibility Provider endpoints (issue #5): auth, forecasts to limits, heartbeat, fallback.

A real :class:`LimitStore` in ``tmp_path``; the routes through FastAPI's TestClient on a bare app;
the clock is injected, nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from noxblock.auth import LimitStore
from noxblock.oscp import BASE_PATH, OSCP_WHO, OscpFp, add_oscp_routes, group_measurements_payload

SITE = "lippestrasse"
TOKEN = "cp-secret-token-0123456789"
V = 230.0
CET = timezone(timedelta(hours=1))
NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)


def t(hhmm: str) -> datetime:
    h, m = hhmm.split(":")
    return datetime(2024, 1, 15, int(h), int(m), tzinfo=UTC)


def iso(hhmm: str) -> str:
    return t(hhmm).isoformat().replace("+00:00", "Z")


def block(start: str, end: str, capacity: float, unit: str = "A", phase: str = "ALL") -> dict[str, Any]:
    return {
        "capacity": capacity,
        "phase": phase,
        "unit": unit,
        "start_time": iso(start),
        "end_time": iso(end),
    }


def forecast(*blocks: dict[str, Any], type: str = "CONSUMPTION") -> dict[str, Any]:
    return {"group_id": SITE, "type": type, "forecasted_blocks": list(blocks)}


@dataclass
class Fp:
    client: TestClient
    limits: LimitStore
    state: OscpFp

    def post(self, action: str, body: Any, token: str | None = TOKEN) -> Any:
        headers = {} if token is None else {"Authorization": f"Token {token}"}
        return self.client.post(f"{BASE_PATH}/{action}", json=body, headers=headers)


@pytest.fixture
def fp(tmp_path: Path) -> Iterator[Fp]:
    limits = LimitStore.in_dir(tmp_path / "var")
    app = FastAPI()
    state = add_oscp_routes(
        app,
        limits,
        site_id=SITE,
        voltage_v=V,
        token=TOKEN,
        clock=lambda: NOW,
        state_path=tmp_path / "var" / "oscp.json",
    )
    with TestClient(app) as client:
        yield Fp(client, limits, state)
    limits.close()


HEARTBEAT = {"offline_mode_at": "2024-01-15T13:00:00+01:00"}
REGISTER = {
    "token": "fp-to-cp-token",
    "version_url": [{"version": "2.0", "base_url": "https://dso.example/oscp/cp"}],
}
HANDSHAKE = {"required_behaviour": {"heartbeat_interval": 60}}


# -- auth ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "action,body", [("register", REGISTER), ("handshake", HANDSHAKE), ("heartbeat", HEARTBEAT)]
)
def test_204_with_the_token(fp: Fp, action: str, body: dict[str, Any]) -> None:
    r = fp.post(action, body)
    assert r.status_code == 204, r.text
    assert r.content == b""


@pytest.mark.parametrize("action", ["register", "handshake", "heartbeat", "update_group_capacity_forecast"])
def test_401_without_or_with_a_wrong_token(fp: Fp, action: str) -> None:
    body = forecast(block("13:00", "14:00", 10))
    assert fp.post(action, body, token=None).status_code == 401
    assert fp.post(action, body, token="wrong").status_code == 401
    r = fp.client.post(f"{BASE_PATH}/{action}", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 401
    assert fp.limits.schedule(SITE).blocks == ()


@pytest.mark.parametrize("configured", [None, ""])
def test_no_token_configured_refuses_everything(tmp_path: Path, configured: str | None) -> None:
    limits = LimitStore.in_dir(tmp_path)
    app = FastAPI()
    add_oscp_routes(app, limits, site_id=SITE, voltage_v=V, token=configured)
    client = TestClient(app)
    r = client.post(f"{BASE_PATH}/heartbeat", json=HEARTBEAT, headers={"Authorization": "Token "})
    assert r.status_code == 401
    limits.close()


def test_register_and_handshake_are_kept(fp: Fp) -> None:
    fp.post("register", REGISTER)
    fp.post("handshake", HANDSHAKE)
    assert fp.state.registration == REGISTER
    assert fp.state.required_behaviour is not None
    assert fp.state.required_behaviour["heartbeat_interval"] == 60


# -- forecasts to limits ------------------------------------------------------------------------
def test_forecast_in_kw_and_in_a_become_limit_blocks(fp: Fp) -> None:
    r = fp.post(
        "update_group_capacity_forecast",
        forecast(block("13:00", "14:00", 69, unit="KW"), block("14:00", "15:00", 40, unit="A")),
    )
    assert r.status_code == 204, r.text
    blocks = fp.limits.schedule(SITE).blocks
    assert [(b.start, b.end) for b in blocks] == [(t("13:00"), t("14:00")), (t("14:00"), t("15:00"))]
    # 69 kW on three phases of 230 V: 69000 / (3 * 230) = 100 A per phase.
    assert blocks[0].max_current_a == pytest.approx(100.0)
    assert blocks[0].max_power_kw == pytest.approx(69.0)
    assert blocks[1].max_current_a == pytest.approx(40.0)
    assert blocks[0].audit_id == blocks[1].audit_id
    [audit] = fp.limits.audit(SITE)
    assert audit.token_id == OSCP_WHO
    assert audit.status == "accepted"
    assert audit.received_at == NOW
    assert json.loads(audit.body)["type"] == "CONSUMPTION"


def test_forecast_in_w_and_single_phase(fp: Fp) -> None:
    r = fp.post(
        "update_group_capacity_forecast",
        forecast(
            block("13:00", "14:00", 13800, unit="W"),  # 13800 / (3 * 230) = 20 A
            block("14:00", "15:00", 4.6, unit="KW", phase="ONE"),  # one phase: 4600 / 230 = 20 A
            block("15:00", "16:00", 16, unit="A", phase="TWO"),  # a current as is
        ),
    )
    assert r.status_code == 204, r.text
    assert [b.max_current_a for b in fp.limits.schedule(SITE).blocks] == pytest.approx([20.0, 20.0, 16.0])


def test_forecast_replaces_the_schedule_over_its_span(fp: Fp) -> None:
    fp.post("update_group_capacity_forecast", forecast(block("13:00", "15:00", 50)))
    fp.post("update_group_capacity_forecast", forecast(block("14:00", "16:00", 30)))
    blocks = fp.limits.schedule(SITE).blocks
    assert [(b.start, b.end, b.max_current_a) for b in blocks] == [
        (t("13:00"), t("14:00"), 50.0),
        (t("14:00"), t("16:00"), 30.0),
    ]


def test_generation_forecast_is_ignored(fp: Fp) -> None:
    assert (
        fp.post(
            "update_group_capacity_forecast", forecast(block("13:00", "14:00", 5), type="GENERATION")
        ).status_code
        == 204
    )
    assert fp.limits.schedule(SITE).blocks == ()
    assert fp.state.oscp_state(NOW)["fallback_a"] is None


def _locs(r: Any) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in r.json()["detail"]]


@pytest.mark.parametrize(
    "body,field",
    [
        (forecast(block("13:00", "14:00", 5, unit="VA")), "unit"),
        (forecast(block("13:00", "14:00", 5, unit="KWH")), "forecasted_blocks"),
        (forecast(block("13:00", "14:00", 5, phase="FOUR")), "phase"),
        (forecast(block("13:00", "14:00", -5)), "capacity"),
        ({"type": "CONSUMPTION", "forecasted_blocks": [block("13:00", "14:00", 5)]}, "group_id"),
        ({"group_id": SITE, "forecasted_blocks": [block("13:00", "14:00", 5)]}, "type"),
        ({"group_id": SITE, "type": "CONSUMPTION"}, "forecasted_blocks"),
        (forecast({**block("13:00", "14:00", 5), "start_time": "2024-01-15T13:00:00"}), "start_time"),
        (forecast({k: v for k, v in block("13:00", "14:00", 5).items() if k != "end_time"}), "end_time"),
        (forecast(block("14:00", "13:00", 5)), "forecasted_blocks"),
        (forecast(block("13:00", "15:00", 5), block("14:00", "16:00", 5)), "forecasted_blocks"),
    ],
)
def test_422_for_a_bad_forecast(fp: Fp, body: dict[str, Any], field: str) -> None:
    r = fp.post("update_group_capacity_forecast", body)
    assert r.status_code == 422, r.text
    assert any(field in loc for loc in _locs(r)), _locs(r)
    assert fp.limits.schedule(SITE).blocks == ()
    [audit] = fp.limits.audit(SITE)
    assert audit.status == "rejected"
    assert audit.token_id == OSCP_WHO


def test_naive_time_is_named(fp: Fp) -> None:
    r = fp.post("heartbeat", {"offline_mode_at": "2024-01-15T13:00:00"})
    assert r.status_code == 422
    assert ("body", "offline_mode_at") in _locs(r)
    assert "naive" in r.text


def test_422_for_bad_json_and_missing_fields(fp: Fp) -> None:
    r = fp.client.post(
        f"{BASE_PATH}/heartbeat", content=b"{not json", headers={"Authorization": f"Token {TOKEN}"}
    )
    assert r.status_code == 422
    assert ("body", "token") in _locs(fp.post("register", {"version_url": REGISTER["version_url"]}))
    assert fp.post("handshake", {}).status_code == 422


def test_other_group_refused_when_group_is_configured(tmp_path: Path) -> None:
    limits = LimitStore.in_dir(tmp_path)
    app = FastAPI()
    add_oscp_routes(app, limits, site_id=SITE, voltage_v=V, token=TOKEN, group_id="dso-group-7")
    client = TestClient(app)
    headers = {"Authorization": f"Token {TOKEN}"}
    url = f"{BASE_PATH}/update_group_capacity_forecast"
    assert client.post(url, json=forecast(block("13:00", "14:00", 5)), headers=headers).status_code == 404
    ok = {**forecast(block("13:00", "14:00", 5)), "group_id": "dso-group-7"}
    assert client.post(url, json=ok, headers=headers).status_code == 204
    assert [b.max_current_a for b in limits.schedule(SITE).blocks] == [5.0]
    limits.close()


# -- heartbeat and fallback ---------------------------------------------------------------------
def test_online_until_offline_mode_at(fp: Fp) -> None:
    assert fp.state.oscp_state(NOW) == {"online": True, "fallback_a": None}  # no heartbeat yet
    fp.post("heartbeat", HEARTBEAT)  # 13:00+01:00 = 12:00 UTC
    assert fp.state.oscp_state(NOW)["online"] is True
    assert fp.state.oscp_state(NOW + timedelta(seconds=1))["online"] is False
    fp.post("heartbeat", {"offline_mode_at": "2024-01-15T12:05:00Z"})  # the CP is back
    assert fp.state.oscp_state(NOW + timedelta(minutes=1))["online"] is True
    with pytest.raises(ValueError, match="naive"):
        fp.state.oscp_state(datetime(2024, 1, 15, 12, 0))


def test_fallback_stored_and_reported(fp: Fp, tmp_path: Path) -> None:
    r = fp.post(
        "update_group_capacity_forecast",
        forecast(
            block("00:00", "12:00", 32), block("12:00", "23:00", 20.7, unit="KW"), type="FALLBACK_CONSUMPTION"
        ),
    )
    assert r.status_code == 204, r.text
    assert fp.limits.schedule(SITE).blocks == ()  # the fallback is not a limit while online
    fp.post("heartbeat", {"offline_mode_at": "2024-01-15T11:00:00Z"})
    # 20.7 kW / (3 * 230 V) = 30 A per phase
    assert fp.state.oscp_state(t("13:00")) == {"online": False, "fallback_a": pytest.approx(30.0)}
    assert fp.state.oscp_state(t("11:30"))["fallback_a"] == pytest.approx(32.0)
    # outside every fallback block: the tightest one
    assert fp.state.oscp_state(t("23:30"))["fallback_a"] == pytest.approx(30.0)
    # kept across a restart, in the state file
    again = OscpFp(state_path=tmp_path / "var" / "oscp.json")
    assert again.oscp_state(t("13:00")) == {"online": False, "fallback_a": pytest.approx(30.0)}
    assert (tmp_path / "var" / "oscp.json").stat().st_mode & 0o777 == 0o600
    # a new fallback forecast replaces the old one
    fp.post(
        "update_group_capacity_forecast", forecast(block("00:00", "23:00", 10), type="FALLBACK_CONSUMPTION")
    )
    assert fp.state.oscp_state(t("13:00"))["fallback_a"] == pytest.approx(10.0)


# -- FP -> CP measurements ----------------------------------------------------------------------
def test_group_measurements_payload() -> None:
    at = datetime(2024, 1, 15, 13, 0, tzinfo=CET)
    assert group_measurements_payload(SITE, [10.0, 11.5, 0.0], at) == {
        "group_id": SITE,
        "measurements": [
            {"value": 10.0, "phase": "ONE", "unit": "A", "measure_time": "2024-01-15T12:00:00Z"},
            {"value": 11.5, "phase": "TWO", "unit": "A", "measure_time": "2024-01-15T12:00:00Z"},
            {"value": 0.0, "phase": "THREE", "unit": "A", "measure_time": "2024-01-15T12:00:00Z"},
        ],
    }
    json.dumps(group_measurements_payload(SITE, [16], at), allow_nan=False)


@pytest.mark.parametrize(
    "group,values,at,match",
    [
        (SITE, [1.0], datetime(2024, 1, 15, 12, 0), "naive"),
        (SITE, [], NOW, "1 to 3"),
        (SITE, [1.0, 2.0, 3.0, 4.0], NOW, "1 to 3"),
        (SITE, [float("nan")], NOW, r"measured_a\[0\]"),
        (SITE, [1.0, -2.0], NOW, r"measured_a\[1\]"),
        ("", [1.0], NOW, "group_id"),
    ],
)
def test_group_measurements_payload_refuses(
    group: str, values: list[float], at: datetime, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        group_measurements_payload(group, values, at)
