"""Bearer tokens, grid-operator limits over REST and their audit (issue #5): stores, routes and CLI.

Real SQLite files in ``tmp_path``; the routes through FastAPI's TestClient on the app of
``noxblock.api.create_app`` (whose read endpoints stay open); ``noxblock token`` as a process.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from noxblock.api import create_app
from noxblock.api_limits import MAX_BODY_BYTES, add_access_routes
from noxblock.auth import DB_NAME, LimitStore, TokenStore, UnknownTokenError, open_stores
from noxblock.cli import main as cli_main
from noxblock.limits import LimitBlock, current_from_power_a, limits_series, merge
from ocpp_gateway import SqliteStorage

SITE = "lippestrasse"
OTHER = "other-street"
SITES = {SITE: 230.0, OTHER: 400.0}
LIMITS = f"/api/v1/sites/{SITE}/limits"
CET = timezone(timedelta(hours=1))


def t(hhmm: str, day: int = 15) -> datetime:
    """A UTC time on 2024-01-``day``."""
    h, m = hhmm.split(":")
    return datetime(2024, 1, day, int(h), int(m), tzinfo=UTC)


def iso(hhmm: str) -> str:
    return t(hhmm).isoformat()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "noxblock.cli", *args], capture_output=True, text=True, timeout=120
    )


@dataclass
class Api:
    client: TestClient
    tokens: TokenStore
    limits: LimitStore
    token: dict[str, str]  # name -> token
    ids: dict[str, str]  # name -> token id

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token[name]}"}

    def put(self, name: str, body: Any, site: str = SITE) -> Any:
        path = f"/api/v1/sites/{site}/limits"
        if isinstance(body, bytes | str):
            return self.client.put(path, content=body, headers=self.auth(name))
        return self.client.put(path, json=body, headers=self.auth(name))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    storage = SqliteStorage(tmp_path / "noxblock.sqlite", autocommit=True)
    tokens, limits = open_stores(tmp_path / "var")
    app = create_app(storage)
    add_access_routes(app, tokens, limits, SITES)
    token, ids = {}, {}
    for name, role, site in [
        ("grid", "grid-operator", SITE),
        ("other-grid", "grid-operator", OTHER),
        ("operator", "operator", None),
        ("viewer", "viewer", None),
    ]:
        record, token[name] = tokens.create(role, site)
        ids[name] = record.id
    with TestClient(app) as client:
        yield Api(client, tokens, limits, token, ids)
    tokens.close()
    limits.close()
    storage.close()


def block(start: str, end: str | None, **limit: Any) -> dict[str, Any]:
    return {"start": start, "end": end, **(limit or {"max_current_a": 100.0})}


def spans(schedule: dict[str, Any]) -> list[tuple[str, str | None, float]]:
    """(start, end, max_current_a) of a schedule response, times as HH:MM UTC."""

    def hm(s: str | None) -> str | None:
        return None if s is None else datetime.fromisoformat(s).astimezone(UTC).strftime("%H:%M")

    return [(hm(b["start"]), hm(b["end"]), b["max_current_a"]) for b in schedule["blocks"]]


# -- tokens -------------------------------------------------------------------------------------
def test_token_create_prints_the_token_last_and_stores_only_its_hash(tmp_path: Path) -> None:
    data = tmp_path / "var"
    p = run_cli("token", "create", "--role", "grid-operator", "--site", SITE, "--data-dir", str(data))
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip().splitlines()[-1]
    assert token.startswith("nbx_") and len(token) > 50
    secret = token.rsplit("_", 1)[-1] if token.count("_") == 2 else token[17:]
    files = {f.name: f.read_bytes() for f in data.iterdir()}
    assert DB_NAME in files
    for name, content in files.items():  # the database and any WAL/SHM beside it
        assert token.encode() not in content, name
        assert token[17:].encode() not in content, name
        assert secret.encode() not in content, name
    assert hashlib.sha256(token.encode()).hexdigest().encode() in b"".join(files.values())
    assert token not in p.stderr
    tokens = TokenStore(data / DB_NAME)
    record = tokens.verify(token)
    assert record is not None and (record.role, record.site) == ("grid-operator", SITE)
    assert record.id in p.stdout.splitlines()[0]
    tokens.close()


def test_verify_list_and_revoke(tmp_path: Path) -> None:
    tokens = TokenStore.in_dir(tmp_path / "var")
    viewer, viewer_token = tokens.create("viewer")
    grid, grid_token = tokens.create("grid-operator", SITE, now=datetime(2024, 1, 15, 18, tzinfo=CET))
    assert grid.created_at == t("17:00") and grid.created_at.tzinfo is not None
    assert tokens.verify(viewer_token) == viewer
    assert tokens.verify(grid_token) == grid
    wrong = grid_token[:-1] + ("A" if grid_token[-1] != "A" else "B")
    for bad in (
        wrong,
        "",
        "nbx_",
        grid_token + "x",
        grid_token.replace("nbx_", "xyz_"),
        "Bearer " + grid_token,
    ):
        assert tokens.verify(bad) is None, bad
    assert tokens.verify(viewer_token.replace(viewer.id, grid.id)) is None  # secret of another id
    assert [r.id for r in tokens.list()] == [grid.id, viewer.id]  # by creation time
    revoked = tokens.revoke(grid.id, now=t("18:00"))
    assert revoked.revoked_at == t("18:00") and not revoked.active
    assert tokens.verify(grid_token) is None and tokens.verify(viewer_token) == viewer
    assert tokens.revoke(grid.id).revoked_at == t("18:00")  # stays revoked as it was
    with pytest.raises(UnknownTokenError, match="no token with id 'nope'"):
        tokens.revoke("nope")
    with pytest.raises(ValueError, match="role"):
        tokens.create("admin")
    with pytest.raises(ValueError, match="site"):
        tokens.create("grid-operator")
    with pytest.raises(ValueError, match="site"):
        tokens.create("viewer", SITE)
    assert tokens.schema_version == 1
    tokens.close()
    db = sqlite3.connect(tmp_path / "var" / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "schema_version", "tokens", "limit_blocks", "limit_audit"
    }  # fmt: skip
    db.close()
    reopened = TokenStore.in_dir(tmp_path / "var")  # migrations do not run twice
    assert reopened.verify(viewer_token) == viewer and reopened.schema_version == 1
    reopened.close()


def test_token_cli_list_and_revoke(tmp_path: Path) -> None:
    data = str(tmp_path / "var")
    created = [
        run_cli("token", "create", "--role", "operator", "--data-dir", data),
        run_cli("token", "create", "--role", "grid-operator", "--site", SITE, "--data-dir", data),
    ]
    assert all(p.returncode == 0 for p in created), [p.stderr for p in created]
    operator_token, grid_token = (p.stdout.strip().splitlines()[-1] for p in created)
    listed = run_cli("token", "list", "--json", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    assert operator_token not in listed.stdout and grid_token not in listed.stdout
    rows = json.loads(listed.stdout)
    assert [(r["role"], r["site"], r["revoked"]) for r in rows] == [
        ("operator", None, None),
        ("grid-operator", SITE, None),
    ]
    assert all(datetime.fromisoformat(r["created"]).tzinfo is not None for r in rows)
    grid_id = rows[1]["id"]
    p = run_cli("token", "revoke", grid_id, "--data-dir", data)
    assert p.returncode == 0 and grid_id in p.stdout, p.stderr
    listed = run_cli("token", "list", "--data-dir", data)  # a table
    assert listed.returncode == 0, listed.stderr
    header, operator_row, grid_row = listed.stdout.strip().splitlines()
    assert header.split() == ["id", "role", "site", "created", "revoked"]
    assert operator_row.split()[:3] == [rows[0]["id"], "operator", "-"] and operator_row.split()[-1] == "-"
    assert grid_row.split()[:3] == [grid_id, "grid-operator", SITE] and grid_row.split()[-1] != "-"
    assert operator_token not in listed.stdout and grid_token not in listed.stdout
    tokens = TokenStore(Path(data) / DB_NAME)
    assert tokens.verify(grid_token) is None and tokens.verify(operator_token) is not None
    tokens.close()
    p = run_cli("token", "revoke", "0123456789ab", "--data-dir", data)
    assert p.returncode == 2 and "0123456789ab" in p.stderr


def test_token_create_bad_role_or_missing_site_exits_2_naming_the_flag(tmp_path: Path) -> None:
    data = str(tmp_path / "var")
    p = run_cli("token", "create", "--role", "admin", "--data-dir", data)
    assert p.returncode == 2 and "--role" in p.stderr
    p = run_cli("token", "create", "--role", "grid-operator", "--data-dir", data)
    assert p.returncode == 2 and "--site" in p.stderr and "nbx_" not in p.stdout


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--role", "viewer", "--site", SITE], "--site"),
        (["--role", "grid-operator", "--site", " padded"], "--site"),
        (["--role", "grid-operator", "--site", ""], "--site"),
        (["--site", SITE], "--role"),
    ],
)
def test_token_create_other_bad_flags_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], flag: str
) -> None:
    try:
        code = cli_main(["token", "create", *args, "--data-dir", str(tmp_path / "var")])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    out = capsys.readouterr()
    assert flag in out.err and "nbx_" not in out.out
    assert not (tmp_path / "var" / DB_NAME).exists() or TokenStore.in_dir(tmp_path / "var").list() == []


# -- access ---------------------------------------------------------------------------------------
def test_401_without_a_token_or_with_a_wrong_or_revoked_one(api: Api) -> None:
    body = {"blocks": [block(iso("16:00"), None)]}
    wrong = api.token["operator"][:-2] + "xx"
    for method, path, kwargs in [
        ("PUT", LIMITS, {"json": body}),
        ("GET", LIMITS, {}),
        ("GET", LIMITS + "/audit", {}),
    ]:
        for headers in (
            {},
            {"Authorization": f"Bearer {wrong}"},
            {"Authorization": "Bearer "},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": api.token["operator"]},  # no scheme
        ):
            r = api.client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers
    # a bad body without a token is still a 401: access is checked before the body is read
    assert api.client.put(LIMITS, content=b"{not json").status_code == 401
    api.tokens.revoke(api.ids["operator"])
    r = api.put("operator", body)
    assert r.status_code == 401 and "invalid_token" in r.headers["WWW-Authenticate"]
    assert api.limits.audit(SITE) == []


def test_403_for_the_wrong_role_or_another_sites_grid_operator(api: Api) -> None:
    body = {"blocks": [block(iso("16:00"), None)]}
    r = api.put("viewer", body)
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    r = api.put("other-grid", body)
    assert r.status_code == 403 and OTHER in r.json()["detail"] and SITE in r.json()["detail"]
    assert api.client.get(LIMITS, headers=api.auth("other-grid")).status_code == 403
    assert api.client.get(LIMITS + "/audit", headers=api.auth("other-grid")).status_code == 403
    assert api.client.get(LIMITS + "/audit", headers=api.auth("viewer")).status_code == 403
    assert api.limits.schedule(SITE).blocks == () and api.limits.audit(SITE) == []
    # the same tokens where they are allowed
    assert api.put("other-grid", body, site=OTHER).status_code == 200
    assert api.client.get(f"/api/v1/sites/{OTHER}/limits", headers=api.auth("viewer")).status_code == 200


def test_404_for_a_site_this_service_does_not_run(api: Api) -> None:
    r = api.put("operator", {"blocks": [block(iso("16:00"), None)]}, site="nowhere")
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]
    assert api.client.get("/api/v1/sites/nowhere/limits", headers=api.auth("viewer")).status_code == 404


def test_open_read_endpoints_and_openapi_show_the_bearer_scheme(api: Api) -> None:
    assert api.client.get("/api/v1/charge-points").status_code == 200  # unchanged, no token
    assert api.client.get("/api/v1/transactions").status_code == 200
    spec = api.client.get("/api/v1/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    put = spec["paths"]["/api/v1/sites/{site}/limits"]["put"]
    assert put["security"] and {"401", "403", "422"} <= set(put["responses"])
    body_schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert set(body_schema["properties"]) == {"blocks", "min_per_point_kw"}
    assert "max_power_kw" in body_schema["properties"]["blocks"]["items"]["properties"]
    assert "security" in spec["paths"]["/api/v1/sites/{site}/limits/audit"]["get"]


# -- limits -------------------------------------------------------------------------------------
def test_put_then_get_returns_the_schedule(api: Api) -> None:
    body = {
        "blocks": [  # any order, any offset; kW on 230 V and 3 phases
            {"start": "2024-01-15T21:00:00+01:00", "end": None, "max_power_kw": 110.4},
            {"start": "2024-01-15T17:00:00+01:00", "end": "2024-01-15T21:00:00+01:00", "max_current_a": 80},
        ],
        "min_per_point_kw": 4.2,
    }
    r = api.put("grid", body)
    assert r.status_code == 200, r.text
    put = r.json()
    assert put["site"] == SITE and put["voltage_v"] == 230.0
    assert spans(put) == [("16:00", "20:00", 80.0), ("20:00", None, pytest.approx(160.0))]
    assert [b["max_power_kw"] for b in put["blocks"]] == [pytest.approx(80 * 3 * 230 / 1000), 110.4]
    assert all(b["min_per_point_kw"] == 4.2 for b in put["blocks"])
    assert all(b["start"].endswith("Z") or b["start"].endswith("+00:00") for b in put["blocks"])
    (audit,) = api.limits.audit(SITE)
    assert {b["audit_id"] for b in put["blocks"]} == {audit.id}
    for name in ("viewer", "grid", "operator"):
        r = api.client.get(LIMITS, headers=api.auth(name))
        assert r.status_code == 200 and r.json() == put, name
    r = api.client.get(LIMITS, headers=api.auth("viewer"), params={"from": "2024-01-15T20:30:00+00:00"})
    assert spans(r.json()) == [("20:00", None, pytest.approx(160.0))]
    r = api.client.get(LIMITS, headers=api.auth("viewer"), params={"from": "2024-01-15T20:30:00"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "from"]
    # another site's schedule is its own (and 400 V there)
    r = api.put("operator", {"blocks": [block(iso("10:00"), None, max_power_kw=12.0)]}, site=OTHER)
    assert spans(r.json()) == [("10:00", None, pytest.approx(10.0))]
    assert api.client.get(LIMITS, headers=api.auth("viewer")).json() == put


def test_a_put_replaces_the_schedule_over_its_span(api: Api) -> None:
    assert api.put("grid", {"blocks": [block(iso("16:00"), None, max_current_a=100)]}).status_code == 200
    # inside: cut around it
    r = api.put("grid", {"blocks": [block(iso("17:00"), iso("18:00"), max_current_a=50)]})
    assert spans(r.json()) == [("16:00", "17:00", 100), ("17:00", "18:00", 50), ("18:00", None, 100)]
    # two blocks with a gap: the gap has no limit any more, outside the span nothing changes
    two = [
        block(iso("17:30"), iso("18:30"), max_current_a=40),
        block(iso("19:00"), iso("20:00"), max_current_a=30),
    ]
    r = api.put("operator", {"blocks": two})
    assert spans(r.json()) == [
        ("16:00", "17:00", 100),
        ("17:00", "17:30", 50),
        ("17:30", "18:30", 40),
        ("19:00", "20:00", 30),
        ("20:00", None, 100),
    ]
    # an open-ended block replaces everything from its start on
    r = api.put("grid", {"blocks": [block(iso("17:15"), None, max_current_a=63)]})
    assert spans(r.json()) == [("16:00", "17:00", 100), ("17:00", "17:15", 50), ("17:15", None, 63)]
    assert api.client.get(LIMITS, headers=api.auth("viewer")).json() == r.json()


def test_put_may_answer_the_schedule_in_a_200(api: Api) -> None:
    r = api.put("grid", json.dumps({"blocks": [block(iso("16:00"), iso("17:00"), max_current_a=0.0)]}))
    assert r.status_code in (200, 204)
    assert spans(api.client.get(LIMITS, headers=api.auth("grid")).json()) == [("16:00", "17:00", 0.0)]


GOOD = {"start": "2024-01-15T16:00:00+00:00", "end": "2024-01-15T17:00:00+00:00", "max_current_a": 50.0}


def with_block(**changes: Any) -> dict[str, Any]:
    b = {**GOOD, **changes}
    return {"blocks": [{k: v for k, v in b.items() if v is not ...}]}


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        (with_block(start="2024-01-15T16:00:00"), ["body", "blocks", 0, "start"], "offset"),
        (with_block(end="2024-01-15T17:00:00"), ["body", "blocks", 0, "end"], "offset"),
        (with_block(start="2024-01-15"), ["body", "blocks", 0, "start"], "offset"),
        (with_block(start=1705334400), ["body", "blocks", 0, "start"], "ISO 8601"),
        (with_block(start="yesterday"), ["body", "blocks", 0, "start"], ""),
        (with_block(end="2024-01-15T15:00:00+00:00"), ["body", "blocks", 0], "after start"),
        (with_block(end="2024-01-15T16:00:00+00:00"), ["body", "blocks", 0], "after start"),
        (with_block(end=...), ["body", "blocks", 0, "end"], ""),
        (with_block(max_current_a=-1.0), ["body", "blocks", 0, "max_current_a"], ""),
        (with_block(max_current_a="16"), ["body", "blocks", 0, "max_current_a"], "number"),
        (with_block(max_current_a="lots"), ["body", "blocks", 0, "max_current_a"], "number"),
        (with_block(max_current_a=True), ["body", "blocks", 0, "max_current_a"], "number"),
        (with_block(max_current_a=None), ["body", "blocks", 0], "exactly one"),
        (with_block(max_current_a=...), ["body", "blocks", 0], "exactly one"),
        (with_block(max_power_kw=10.0), ["body", "blocks", 0], "exactly one"),
        (with_block(max_current_a=..., max_power_kw=-0.5), ["body", "blocks", 0, "max_power_kw"], ""),
        (with_block(phase="L1"), ["body", "blocks", 0, "phase"], "not permitted"),
        ({**with_block(), "site": SITE}, ["body", "site"], "not permitted"),
        ({**with_block(), "min_per_point_kw": -4.2}, ["body", "min_per_point_kw"], ""),
        ({**with_block(), "min_per_point_kw": "4.2"}, ["body", "min_per_point_kw"], "number"),
        ({"blocks": []}, ["body", "blocks"], ""),
        ({}, ["body", "blocks"], ""),
        ([GOOD], ["body"], ""),
        (
            {"blocks": [GOOD, {**GOOD, "start": "2024-01-15T16:30:00+00:00", "end": None}]},
            ["body", "blocks"],
            "overlaps",
        ),
        (
            {
                "blocks": [
                    {**GOOD, "end": None},
                    {**GOOD, "start": "2024-01-16T00:00:00+00:00", "end": "2024-01-16T01:00:00+00:00"},
                ]
            },
            ["body", "blocks"],
            "overlaps",
        ),
        # JSON that Python's parser reads as non-finite numbers
        (
            json.dumps(GOOD).replace("50.0", "NaN"),
            ["body", "blocks", 0, "max_current_a"],
            "finite",
        ),
        (json.dumps(GOOD).replace("50.0", "Infinity"), ["body", "blocks", 0, "max_current_a"], "finite"),
        (json.dumps(GOOD).replace("50.0", "1e999"), ["body", "blocks", 0, "max_current_a"], "finite"),
        ('{"blocks": [', ["body"], "JSON"),
        ("", ["body"], "JSON"),
    ],
)
def test_422_for_a_bad_body_names_the_field(api: Api, body: Any, loc: list[Any], words: str) -> None:
    if isinstance(body, str) and body.startswith('{"start"'):
        body = '{"blocks": [' + body + "]}"
    r = api.put("grid", body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][: len(loc)] == loc for d in detail), detail
    assert all(isinstance(d["msg"], str) and d["msg"] for d in detail)
    assert words.lower() in " ".join(d["msg"] for d in detail).lower()
    assert api.limits.schedule(SITE).blocks == ()
    (audit,) = api.limits.audit(SITE)  # a refused request is audited, with why
    assert audit.status == "rejected" and audit.error and audit.schedule is None
    assert audit.token_id == api.ids["grid"]


def test_413_for_a_huge_body(api: Api) -> None:
    r = api.put("grid", b"{" + b" " * MAX_BODY_BYTES + b"}")
    assert r.status_code == 413


def test_the_audit_records_who_when_and_the_body_as_received(api: Api) -> None:
    raw = (
        '{ "min_per_point_kw": 4.2,\n  "blocks": [{"start": "2024-01-15T17:00:00+01:00", '
        '"end": "2024-01-15T19:00:00+01:00", "max_power_kw": 69}] }'
    )
    before = datetime.now(UTC)
    assert api.put("grid", raw).status_code == 200
    assert (
        api.put("operator", {"blocks": [block(iso("17:00"), iso("17:30"), max_current_a=20)]}).status_code
        == 200
    )
    after = datetime.now(UTC)
    assert api.put("grid", {"blocks": [block(iso("17:00"), None, max_current_a="x")]}).status_code == 422
    r = api.client.get(LIMITS + "/audit", headers=api.auth("grid"))
    assert r.status_code == 200, r.text
    rejected, second, first = r.json()
    assert (first["token_id"], first["role"], first["status"]) == (
        api.ids["grid"],
        "grid-operator",
        "accepted",
    )
    assert (second["token_id"], second["role"]) == (api.ids["operator"], "operator")
    assert first["body"] == raw and first["error"] is None
    assert (
        before
        <= datetime.fromisoformat(first["received_at"])
        <= datetime.fromisoformat(second["received_at"])
        <= after
    )
    assert [(b["start"][11:16], b["end"][11:16], b["max_current_a"]) for b in first["schedule"]] == [
        ("16:00", "18:00", pytest.approx(100.0))
    ]
    assert first["schedule"][0]["min_per_point_kw"] == 4.2 and first["schedule"][0]["max_power_kw"] == 69
    # from the request's first start on (it came later than that)
    assert [(b["start"][11:16], b["end"][11:16], b["max_current_a"]) for b in second["schedule"]] == [
        ("17:00", "17:30", 20.0),
        ("17:30", "18:00", pytest.approx(100.0)),
    ]
    assert (
        rejected["status"] == "rejected"
        and "max_current_a" in rejected["error"]
        and rejected["schedule"] is None
    )
    assert api.client.get(LIMITS + "/audit", headers=api.auth("operator")).json() == [rejected, second, first]
    assert api.client.get(
        LIMITS + "/audit", headers=api.auth("grid"), params={"limit": 1, "offset": 2}
    ).json() == [first]
    # the lead adds the site's measured response later
    api.limits.set_measured_response(first["id"], {"max_phase_current_a": 97.5})
    assert api.limits.audit(SITE)[-1].measured_response == {"max_phase_current_a": 97.5}
    with pytest.raises(LookupError):
        api.limits.set_measured_response(10_000, {})
    assert api.client.get(f"/api/v1/sites/{OTHER}/limits/audit", headers=api.auth("operator")).json() == []


def test_the_limit_store_survives_a_reopen(tmp_path: Path) -> None:
    tokens, limits = open_stores(tmp_path)
    who, _ = tokens.create("operator")
    blocks = [
        LimitBlock(t("16:00"), t("18:00"), 80.0),
        LimitBlock(t("18:00"), None, 120.0, min_per_point_kw=4.2),
    ]
    schedule = limits.put(SITE, blocks, who, body="{...}", received_at=t("15:00"))
    assert [(b.start, b.end, b.max_current_a) for b in schedule.blocks] == [
        (t("16:00"), t("18:00"), 80.0),
        (t("18:00"), None, 120.0),
    ]
    with pytest.raises(ValueError, match="naive"):
        limits.put(SITE, [LimitBlock(datetime(2024, 1, 15, 16), None, 1.0)], who, body="")
    with pytest.raises(ValueError, match="max_current_a"):
        limits.put(SITE, [LimitBlock(t("16:00"), None, math.nan)], who, body="")
    limits.close()
    tokens.close()
    limits = LimitStore.in_dir(tmp_path)
    assert limits.schedule(SITE).blocks == schedule.blocks
    assert limits.schedule(SITE, at=t("18:00")).blocks == schedule.blocks[1:]
    assert limits.schedule(OTHER).blocks == ()
    (audit,) = limits.audit(SITE)
    assert (audit.received_at, audit.token_id, audit.body) == (t("15:00"), who.id, "{...}")
    assert audit.schedule == schedule.blocks
    limits.close()


# -- pure functions ------------------------------------------------------------------------------
def test_merge_cuts_the_stored_schedule_at_the_span_edges() -> None:
    old = [LimitBlock(t("10:00"), t("14:00"), 10.0), LimitBlock(t("14:00"), None, 20.0)]
    new = [LimitBlock(t("15:00"), t("16:00"), 1.0), LimitBlock(t("12:00").astimezone(CET), t("13:00"), 2.0)]
    got = [(b.start, b.end, b.max_current_a) for b in merge(old, new)]
    assert got == [
        (t("10:00"), t("12:00"), 10.0),
        (t("12:00"), t("13:00"), 2.0),  # the gap 13:00-15:00 is in the span: no limit there
        (t("15:00"), t("16:00"), 1.0),
        (t("16:00"), None, 20.0),
    ]
    assert all(b.start.tzinfo is UTC for b in merge(old, new))
    assert merge(old, []) == old
    with pytest.raises(ValueError, match=r"new\[1\].*overlaps"):
        merge(old, [LimitBlock(t("12:00"), t("13:00"), 2.0), LimitBlock(t("12:30"), t("14:00"), 2.0)])


def test_limits_series_by_hand() -> None:
    grid = [t("16:00") + timedelta(minutes=15 * k) for k in range(8)]  # 16:00 ... 17:45, 15 min
    blocks = [
        LimitBlock(t("15:00"), t("16:00"), 10.0),  # ends where the grid starts: no effect
        LimitBlock(t("16:10"), t("16:40"), 50.0),  # partly covers 16:00, 16:15 and 16:30 steps
        LimitBlock(t("16:30"), None, 80.0),
        LimitBlock(t("17:15"), t("17:30"), 90.0),  # looser than the open-ended one
    ]
    expected = [50.0, 50.0, 50.0, 80.0, 80.0, 80.0, 80.0, 80.0]
    np.testing.assert_array_equal(limits_series(blocks, grid), expected)
    berlin = pd.date_range("2024-01-15 17:00", periods=8, freq="15min", tz="Europe/Berlin")
    np.testing.assert_array_equal(limits_series(blocks, berlin), expected)
    gaps = [LimitBlock(t("16:15"), t("16:30"), 30.0), LimitBlock(t("17:45"), t("18:00"), 0.0)]
    np.testing.assert_array_equal(
        limits_series(gaps, grid), [np.inf, 30.0, np.inf, np.inf, np.inf, np.inf, np.inf, 0.0]
    )
    # the last step is as long as the one before it, or `step`
    np.testing.assert_array_equal(limits_series([LimitBlock(t("16:20"), None, 5.0)], grid[:2]), [np.inf, 5.0])
    np.testing.assert_array_equal(
        limits_series([LimitBlock(t("16:20"), None, 5.0)], grid[:1], step=timedelta(hours=1)), [5.0]
    )
    assert limits_series([], grid).tolist() == [math.inf] * 8
    assert limits_series(blocks, []).shape == (0,)
    with pytest.raises(ValueError, match="step"):
        limits_series(blocks, grid[:1])
    with pytest.raises(ValueError, match="naive"):
        limits_series(blocks, [datetime(2024, 1, 15, 16), datetime(2024, 1, 15, 17)])
    with pytest.raises(ValueError, match="increasing"):
        limits_series(blocks, grid[::-1])


def test_power_converts_on_three_phases() -> None:
    assert current_from_power_a(110.4, 230.0) == pytest.approx(160.0)
    assert current_from_power_a(11.0, 230.0, phases=1) == pytest.approx(47.826, rel=1e-4)
