"""The sans-I/O layer: frames in, events and frames out; no sockets. Property tests with Hypothesis."""

from __future__ import annotations

import base64
import glob
import json
import os

import fastjsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_gateway import frames as ocpp_frames
from ocpp_gateway import hash_password, verify_password
from ocpp_gateway.frames import Call, CallError, CallResult, parse, parse_datetime, serialize
from ocpp_gateway.protocol import AnswerReceived, CallReceived, Dropped, OcppProtocol, ReplyNeeded
from ocpp_gateway.security import parse_basic_auth
from ocpp_gateway.states import (
    ConnectorStatus,
    TxAction,
    TxEvent,
    TxState,
    connector_transition_expected,
    transaction_step,
)

OCPP16_ERROR_CODES = {
    "NotImplemented",
    "NotSupported",
    "InternalError",
    "ProtocolError",
    "SecurityError",
    "FormationViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
    "TypeConstraintViolation",
    "GenericError",
}


def reply_code(text: str | bytes) -> str:
    event = OcppProtocol().receive(text)
    assert isinstance(event, ReplyNeeded), event
    frame = json.loads(event.text)
    assert frame[0] == 4 and isinstance(frame[1], str) and isinstance(frame[4], dict)
    return frame[2]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "FormationViolation"),
        ("{}", "FormationViolation"),
        ('[2, "1", "Heartbeat"]', "ProtocolError"),
        ('[2, "1", "Heartbeat", []]', "FormationViolation"),
        ('[2, 1, "Heartbeat", {}]', "FormationViolation"),
        ('[7, "1", "Heartbeat", {}]', "PropertyConstraintViolation"),
        ('[2, "1", "FooBar", {}]', "NotImplemented"),
        ('[2, "1", "Reset", {"type": "Hard"}]', "NotSupported"),
        ('[2, "1", "BootNotification", {"chargePointVendor": "V"}]', "OccurenceConstraintViolation"),
        (
            '[2, "1", "BootNotification", {"chargePointVendor": 5, "chargePointModel": "M"}]',
            "TypeConstraintViolation",
        ),
        (
            '[2, "1", "BootNotification", {"chargePointVendor": "'
            + "V" * 21
            + '", "chargePointModel": "M"}]',
            "TypeConstraintViolation",
        ),
        (
            '[2, "1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M", "x": 1}]',
            "FormationViolation",
        ),
        (
            '[2, "1", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Nap"}]',
            "PropertyConstraintViolation",
        ),
        (
            '[2, "1", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "x", "sampledValue": []}]}]',  # noqa: E501
            "TypeConstraintViolation",
        ),
    ],
)
def test_bad_calls_get_the_prescribed_callerror(text, code):
    assert reply_code(text) == code


def _without_multiple_of(node):
    if isinstance(node, dict):
        return {k: _without_multiple_of(v) for k, v in node.items() if k != "multipleOf"}
    return [_without_multiple_of(v) for v in node] if isinstance(node, list) else node


def _outcome(validate, payload):
    try:
        validate(payload)
    except fastjsonschema.JsonSchemaValueException as e:
        return e.rule, e.name, e.message
    return None


def test_schemas_compiled_our_way_answer_as_fastjsonschema_does():
    """Enums compiled to set lookups (and no ``additionalProperties`` on strings) change the speed,
    not one verdict or message of plain fastjsonschema on the schemas."""
    sample = {"value": "1", "measurand": "Current.Import", "phase": "L1", "unit": "A", "context": "Trigger"}
    meter = {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-15T17:00", "sampledValue": [sample]}]}
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    cases: dict[str, list[dict]] = {
        "MeterValues": [
            meter,
            *(
                {**meter, "meterValue": [{**meter["meterValue"][0], "sampledValue": [{**sample, key: bad}]}]}
                for key in ("measurand", "phase", "unit", "context", "location", "format")
                for bad in ("Nap", 3, ["L1"], {"a": 1}, None, True, "l1")
            ),
        ],
        "StatusNotification": [status, *({**status, "status": bad} for bad in ("Nap", 1, True, None))],
    }
    schema_dir, validator = ocpp_frames._SCHEMA_DIR, ocpp_frames._validator
    names = sorted(os.path.basename(p)[: -len(".json")] for p in glob.glob(f"{schema_dir}/*.json"))
    assert len(names) > 50
    for name in names:
        with open(f"{schema_dir}/{name}.json", encoding="utf-8-sig") as f:
            schema = _without_multiple_of(json.load(f))
        stock = fastjsonschema.compile(schema, formats=ocpp_frames._FORMATS, use_default=False)
        for payload in [{}, {"unknown": 1}, *cases.get(name, [])]:
            assert _outcome(validator(name), payload) == _outcome(stock, payload), (name, payload)


def test_unreadable_unique_id_is_answered_with_minus_one():
    event = OcppProtocol().receive("[2]")
    assert isinstance(event, ReplyNeeded) and json.loads(event.text)[1] == "-1"


def test_valid_call_and_answers_are_matched_to_the_call_in_flight():
    p = OcppProtocol()
    event = p.receive('[2, "a", "Heartbeat", {}]')
    assert event == CallReceived(Call("a", "Heartbeat", {}))
    assert isinstance(p.receive('[3, "nobody", {}]'), Dropped)
    unique_id, text = p.send_call("Reset", {"type": "Soft"})
    assert json.loads(text) == [2, unique_id, "Reset", {"type": "Soft"}]
    with pytest.raises(RuntimeError):
        p.send_call("ClearCache", {})
    answer = p.receive(f'[3, "{unique_id}", {{"status": "Accepted"}}]')
    assert answer == AnswerReceived(unique_id, "Reset", {"status": "Accepted"}, None)
    assert p.pending_id is None
    unique_id, _ = p.send_call("ClearCache", {})
    err = p.receive(f'[4, "{unique_id}", "NotSupported", "nope", {{}}]')
    assert isinstance(err, AnswerReceived) and err.error is not None and err.error.code == "NotSupported"
    assert isinstance(p.receive('[3, "x"]'), Dropped)  # broken answers are never answered


def test_serialize_round_trip():
    for frame in (
        Call("1", "Heartbeat", {}),
        CallResult("1", {"a": 1}),
        CallError("1", "GenericError", "x", {}),
    ):
        assert parse(serialize(frame)) == frame


def test_lenient_datetimes_are_utc():
    assert parse_datetime("2024-01-15T17:00:00").utcoffset().total_seconds() == 0
    assert parse_datetime("2024-01-15T18:00:00+01:00") == parse_datetime("2024-01-15T17:00:00Z")


def test_connector_and_transaction_tables():
    assert connector_transition_expected(1, ConnectorStatus.AVAILABLE, ConnectorStatus.PREPARING)
    assert not connector_transition_expected(1, ConnectorStatus.AVAILABLE, ConnectorStatus.FINISHING)
    assert not connector_transition_expected(0, None, ConnectorStatus.CHARGING)
    assert transaction_step(TxState.UNKNOWN, TxEvent.STOP)[0] is TxAction.RECORD_ORPHAN_STOP
    assert transaction_step(TxState.STOPPED, TxEvent.STOP)[0] is TxAction.IGNORE_REPLAYED_STOP


def test_password_hash_is_salted_and_verifies():
    a, b = hash_password("pw", log2_n=10), hash_password("pw", log2_n=10)
    assert a != b and "pw" not in a
    assert verify_password("pw", a) and not verify_password("PW", a) and not verify_password("pw", "garbage")
    assert parse_basic_auth("Basic " + base64.b64encode(b"CP01:a:b").decode()) == ("CP01", "a:b")
    assert parse_basic_auth("Bearer x") is None and parse_basic_auth("Basic !!!") is None


# --- property tests ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
actions = st.sampled_from(
    [
        "Heartbeat",
        "BootNotification",
        "StatusNotification",
        "MeterValues",
        "Authorize",
        "StartTransaction",
        "StopTransaction",
        "DataTransfer",
        "Reset",
        "Nope",
    ]
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=100),
    json_values.map(json.dumps),
    st.tuples(st.sampled_from([2, 3, 4, 5, "2", True]), st.text(max_size=40), actions, json_values).map(
        lambda t: json.dumps(list(t))
    ),
    st.tuples(
        st.just(2), st.text(max_size=40), actions, st.dictionaries(st.text(max_size=20), json_values)
    ).map(lambda t: json.dumps(list(t))),
)


@settings(max_examples=400, deadline=None)
@given(frames)
def test_any_frame_gives_a_valid_event_never_an_exception(data):
    p = OcppProtocol()
    p.send_call("ClearCache", {})  # so answers can also be matched
    event = p.receive(data)
    if isinstance(event, ReplyNeeded):
        frame = json.loads(event.text)
        assert frame[0] == 4 and isinstance(frame[1], str) and len(frame[1]) <= 36
        assert frame[2] in OCPP16_ERROR_CODES and isinstance(frame[3], str) and isinstance(frame[4], dict)
    else:
        assert isinstance(event, CallReceived | AnswerReceived | Dropped)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=36), st.dictionaries(st.text(max_size=10), json_values, max_size=4))
def test_call_errors_echo_the_unique_id(unique_id, payload):
    event = OcppProtocol().receive(json.dumps([2, unique_id, "BootNotification", payload]))
    if isinstance(event, ReplyNeeded):
        assert json.loads(event.text)[1] == unique_id


def _loads_outcome(loads, text):
    try:
        return "ok", repr(loads(text))
    except (ValueError, RecursionError) as e:
        return "error", type(e).__name__


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_documents, st.sampled_from(["", " ", "\n"]), st.sampled_from(["", " ", "x", "]"]))
def test_json_shortcuts_answer_as_the_json_module_does(value, before, after):
    standard = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    text = ocpp_frames.encode_json(value)
    assert text == standard(value)
    for candidate in (before + text + after, text[:-1], "\ufeff" + text):
        assert _loads_outcome(ocpp_frames.decode_json, candidate) == _loads_outcome(json.loads, candidate)
