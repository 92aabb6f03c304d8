// A charge point played by ocpp-rpc in strict mode: every frame in both directions is checked
// against the official OCPP 1.6 JSON schemas bundled with ocpp-rpc. Driven by
// tests/ocpp/test_xcheck_ocpp_rpc.py, which reads the JSON lines this prints on stdout.
//
// usage: node cp.js <endpoint, e.g. ws://127.0.0.1:9000/ocpp> <identity> [password]
// Runs a scripted session (Boot, Heartbeat, StatusNotification, Authorize, StartTransaction,
// MeterValues, DataTransfer, firmware/diagnostics notifications), then answers central-system
// calls until stdin closes.
'use strict';

const { RPCClient, createRPCError } = require('ocpp-rpc');

const [endpoint, identity, password] = process.argv.slice(2);
const ID_TAG = 'XCHECK-TAG';

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function now() {
    return new Date().toISOString();
}

const client = new RPCClient({
    endpoint,
    identity,
    password: password || null,
    protocols: ['ocpp1.6'],
    strictMode: true,
    reconnect: false,
    callTimeoutMs: 10000,
});

client.on('strictValidationFailure', (e) => {
    emit({
        event: 'strict_failure',
        messageId: e.messageId,
        method: e.method,
        outbound: e.outbound,
        isCall: e.isCall,
        error: String(e.error && e.error.message),
    });
});
client.on('badMessage', (e) => {
    emit({ event: 'bad_message', message: String(e.buffer), error: String(e.error && e.error.message) });
});
client.on('close', (e) => emit({ event: 'closed', code: e.code, reason: String(e.reason) }));

const state = {
    transactionId: null,
    energyWh: 1000,
    profiles: new Map(), // chargingProfileId -> {connectorId, profile}
    localListVersion: 0,
};

async function call(method, params) {
    try {
        const result = await client.call(method, params);
        emit({ event: 'result', method, params, result });
        return result;
    } catch (err) {
        emit({ event: 'call_error', method, params, code: err.rpcErrorCode || null, error: String(err.message) });
        return null;
    }
}

function meterValue(context) {
    const sampledValue = [
        { value: String(state.energyWh), context, measurand: 'Energy.Active.Import.Register', unit: 'Wh' },
        { value: '10.0', context, measurand: 'Current.Import', phase: 'L1', unit: 'A' },
        { value: '10.0', context, measurand: 'Current.Import', phase: 'L2', unit: 'A' },
        { value: '10.0', context, measurand: 'Current.Import', phase: 'L3', unit: 'A' },
        { value: '6900', context, measurand: 'Power.Active.Import', unit: 'W' },
    ];
    return [{ timestamp: now(), sampledValue }];
}

async function sendMeterValues(context) {
    state.energyWh += 115;
    const params = { connectorId: 1, meterValue: meterValue(context) };
    if (state.transactionId !== null) params.transactionId = state.transactionId;
    return call('MeterValues', params);
}

async function startTransaction(idTag) {
    const start = await call('StartTransaction', {
        connectorId: 1, idTag, meterStart: state.energyWh, timestamp: now(),
    });
    if (start) state.transactionId = start.transactionId;
    await call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Charging', timestamp: now() });
    return start;
}

async function stopTransaction(reason) {
    if (state.transactionId === null) return;
    const transactionId = state.transactionId;
    state.transactionId = null;
    await call('StopTransaction', {
        transactionId, idTag: ID_TAG, meterStop: state.energyWh, timestamp: now(), reason,
        transactionData: meterValue('Transaction.End'),
    });
    await call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available', timestamp: now() });
}

const CONFIG = [
    { key: 'HeartbeatInterval', readonly: false, value: '300' },
    { key: 'MeterValueSampleInterval', readonly: false, value: '60' },
    { key: 'NumberOfConnectors', readonly: true, value: '1' },
    { key: 'ChargeProfileMaxStackLevel', readonly: true, value: '8' },
    { key: 'ChargingScheduleAllowedChargingRateUnit', readonly: true, value: 'Current' },
    { key: 'ChargingScheduleMaxPeriods', readonly: true, value: '10' },
    { key: 'MaxChargingProfilesInstalled', readonly: true, value: '10' },
];

const handlers = {
    GetConfiguration: ({ params }) => {
        const keys = params.key;
        if (!keys || keys.length === 0) return { configurationKey: CONFIG };
        const known = CONFIG.filter((c) => keys.includes(c.key));
        const unknownKey = keys.filter((k) => !CONFIG.some((c) => c.key === k));
        return unknownKey.length ? { configurationKey: known, unknownKey } : { configurationKey: known };
    },
    ChangeConfiguration: ({ params }) => ({
        status: CONFIG.some((c) => c.key === params.key && !c.readonly) ? 'Accepted' : 'NotSupported',
    }),
    SetChargingProfile: ({ params }) => {
        const p = params.csChargingProfiles;
        if (p.chargingProfilePurpose === 'TxProfile' && p.transactionId !== state.transactionId) {
            return { status: 'Rejected' };
        }
        state.profiles.set(p.chargingProfileId, { connectorId: params.connectorId, profile: p });
        return { status: 'Accepted' };
    },
    ClearChargingProfile: ({ params }) => {
        let removed = 0;
        for (const [id, entry] of state.profiles) {
            const match = params.id !== undefined
                ? id === params.id
                : (params.connectorId === undefined || entry.connectorId === params.connectorId)
                  && (params.chargingProfilePurpose === undefined
                      || entry.profile.chargingProfilePurpose === params.chargingProfilePurpose)
                  && (params.stackLevel === undefined || entry.profile.stackLevel === params.stackLevel);
            if (match) {
                state.profiles.delete(id);
                removed += 1;
            }
        }
        return { status: removed ? 'Accepted' : 'Unknown' };
    },
    GetCompositeSchedule: ({ params }) => {
        // The highest stack level profile on the connector (or the point), as a composite.
        let best = null;
        for (const entry of state.profiles.values()) {
            if (entry.connectorId !== params.connectorId && entry.connectorId !== 0) continue;
            if (!best || entry.profile.stackLevel > best.profile.stackLevel) best = entry;
        }
        if (!best) return { status: 'Rejected' };
        const s = best.profile.chargingSchedule;
        const start = s.startSchedule || now();
        const startMs = Date.parse(start);
        const shift = Math.max(0, Math.floor((Date.now() - startMs) / 1000));
        const periods = s.chargingSchedulePeriod
            .filter((p, i, all) => i + 1 === all.length || all[i + 1].startPeriod > shift)
            .map((p) => ({ ...p, startPeriod: Math.max(0, p.startPeriod - shift) }));
        const scheduleStart = new Date(startMs + shift * 1000).toISOString();
        return {
            status: 'Accepted',
            connectorId: params.connectorId,
            scheduleStart,
            chargingSchedule: {
                duration: params.duration,
                startSchedule: scheduleStart,
                chargingRateUnit: s.chargingRateUnit,
                chargingSchedulePeriod: periods,
            },
        };
    },
    RemoteStartTransaction: ({ params }) => {
        if (state.transactionId !== null) return { status: 'Rejected' };
        setImmediate(() => startTransaction(params.idTag));
        return { status: 'Accepted' };
    },
    RemoteStopTransaction: ({ params }) => {
        if (params.transactionId !== state.transactionId) return { status: 'Rejected' };
        setImmediate(() => stopTransaction('Remote'));
        return { status: 'Accepted' };
    },
    TriggerMessage: ({ params }) => {
        const m = params.requestedMessage;
        const send = {
            Heartbeat: () => call('Heartbeat', {}),
            MeterValues: () => sendMeterValues('Trigger'),
            StatusNotification: () => call('StatusNotification', {
                connectorId: params.connectorId || 0, errorCode: 'NoError', status: 'Available',
            }),
            BootNotification: () => call('BootNotification', { chargePointVendor: 'ocpp-rpc', chargePointModel: 'xcheck' }),
        }[m];
        if (!send) return { status: 'NotImplemented' };
        setImmediate(send);
        return { status: 'Accepted' };
    },
    Reset: () => ({ status: 'Accepted' }),
    UnlockConnector: ({ params }) => ({ status: params.connectorId === 1 ? 'Unlocked' : 'NotSupported' }),
    ChangeAvailability: () => ({ status: state.transactionId === null ? 'Accepted' : 'Scheduled' }),
    ClearCache: () => ({ status: 'Accepted' }),
    DataTransfer: () => ({ status: 'UnknownVendorId' }),
    SendLocalList: ({ params }) => {
        state.localListVersion = params.listVersion;
        return { status: 'Accepted' };
    },
    GetLocalListVersion: () => ({ listVersion: state.localListVersion }),
    ReserveNow: () => ({ status: 'Accepted' }),
    CancelReservation: () => ({ status: 'Accepted' }),
    GetDiagnostics: () => ({ fileName: 'diagnostics.log' }),
    UpdateFirmware: () => ({}),
};

for (const [method, handler] of Object.entries(handlers)) {
    client.handle(method, async (args) => {
        const reply = await handler(args);
        emit({ event: 'cs_call', method, params: args.params, reply, messageId: args.messageId });
        return reply;
    });
}
client.handle(({ method }) => {
    throw createRPCError('NotImplemented', `${method} not handled by the xcheck charge point`);
});

async function script() {
    await client.connect();
    emit({ event: 'open', protocol: client.protocol });
    const boot = await call('BootNotification', {
        chargePointVendor: 'ocpp-rpc', chargePointModel: 'xcheck', chargePointSerialNumber: 'XC-1',
        firmwareVersion: '2.2.1',
    });
    if (!boot || boot.status !== 'Accepted') {
        emit({ event: 'script_failed', reason: 'boot not accepted' });
        return;
    }
    await call('Heartbeat', {});
    await call('StatusNotification', { connectorId: 0, errorCode: 'NoError', status: 'Available', timestamp: now() });
    await call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available', timestamp: now() });
    await call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Preparing', timestamp: now() });
    await call('Authorize', { idTag: ID_TAG });
    await startTransaction(ID_TAG);
    await sendMeterValues('Sample.Periodic');
    await call('DataTransfer', { vendorId: 'org.noxblock.xcheck', messageId: 'hello', data: 'world' });
    await call('DiagnosticsStatusNotification', { status: 'Idle' });
    await call('FirmwareStatusNotification', { status: 'Idle' });
    emit({ event: 'script_done', transactionId: state.transactionId });
}

process.stdin.resume();
process.stdin.on('end', async () => {
    await client.close({ code: 1000, reason: 'done' });
    process.exit(0);
});

script().catch((err) => {
    emit({ event: 'script_failed', reason: String(err && err.message) });
});
