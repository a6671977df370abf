// The intruder's test suite: a hub with a secret, attacked through the
// official socket.io client. After each attack, legitimate clients still
// complete their flow, and the hub's board shows no change by the intruder.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import { capsBin, connectClient, emitWithAck, honestDelivery, nextEvent, orderOf, startHub } from './support.mjs';

let scratch;
let secretFile;
let hub;
let url;

const token = (...args) => execFileSync(capsBin, ['token', ...args, '--secret-file', secretFile]).toString().trim();

/** A JWT made by hand with Node's crypto: proves the format is standard, and makes what `caps token` won't. */
function jwt(claims, secret) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

const order = (store, overrides = {}) => ({
  store,
  orderId: `order-${Math.random().toString(36).slice(2)}`,
  customer: 'Jamal Braun',
  address: 'Schmittfurt, LA',
  ...overrides,
});

async function board() {
  const headers = { authorization: `Bearer ${token('viewer')}` };
  return (await fetch(`${url}/api/status`, { headers })).json();
}

/** What an intruder must not change: counts, open orders, queues. */
async function essentials() {
  const status = await board();
  return {
    orders: status.orders,
    open: status.openOrders.map(({ orderId, state, driver }) => ({ orderId, state, driver })),
    queues: status.queues,
  };
}

/** A vendor and a driver with good tokens place and deliver one order. */
function legitimateFlowWorks() {
  return honestDelivery(url, {
    vendorAuth: { token: token('vendor', '--store', 'acme') },
    driverAuth: { token: token('driver', '--name', 'honest') },
  });
}

/** Runs `attack`, then checks the board is as before and the honest flow still works. */
async function survives(attack) {
  const beforeAttack = await essentials();
  await attack();
  assert.deepEqual(await essentials(), beforeAttack, 'the intruder changed the board');
  await legitimateFlowWorks();
}

/**
 * Waits (at most 10 s) until this address may open sessions again at a
 * normal pace: ten probes in a row are served, 50 ms apart. Each probe
 * costs one opening and the bucket refills five in that time (100 a
 * second), so it holds some forty spare when this returns, enough for the
 * tests that follow to connect without pacing themselves.
 */
async function waitUntilServed() {
  const deadline = Date.now() + 10_000;
  for (let servedInARow = 0; servedInARow < 10;) {
    const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`);
    await res.text();
    servedInARow = res.status === 429 ? 0 : servedInARow + 1;
    assert.ok(Date.now() < deadline, 'still rate limited after 10 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function refusedAtConnect(auth) {
  return connectClient(url, { auth }).then(
    (socket) => {
      socket.close();
      throw new Error('the connection was accepted');
    },
    (error) => error.message,
  );
}

before(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'caps-intruders-'));
  secretFile = path.join(scratch, 'secret');
  writeFileSync(secretFile, randomBytes(32).toString('base64'), { mode: 0o600 });
  ({ hub, url } = await startHub(['--secret-file', secretFile, '--rate-limit', '100']));
  await legitimateFlowWorks();
});

after(async () => {
  await hub.kill();
  rmSync(scratch, { recursive: true, force: true });
});

test('no token, a forged token, an expired token and a bad one are refused at connect', async () => {
  await survives(async () => {
    assert.match(await refusedAtConnect(undefined), /^unauthorized: this hub requires a token/);
    assert.match(await refusedAtConnect({ role: 'vendor', store: 'acme' }), /^unauthorized: this hub requires a token/);
    const now = Math.floor(Date.now() / 1000);
    const forged = jwt({ role: 'vendor', store: 'acme', iat: now, exp: now + 60 }, randomBytes(32));
    assert.match(await refusedAtConnect({ token: forged }), /^unauthorized: the token's signature is not valid/);
    const secret = readSecret();
    const expired = jwt({ role: 'vendor', store: 'acme', iat: now - 120, exp: now - 60 }, secret);
    assert.match(await refusedAtConnect({ token: expired }), /^unauthorized: the token expired/);
    const fine = jwt({ role: 'vendor', store: 'acme', iat: now, exp: now + 60 }, secret);
    (await connectClient(url, { auth: { token: fine } })).close();
    assert.match(await refusedAtConnect({ token: 'not.a.token' }), /^unauthorized: the token is malformed/);
  });
  await hub.waitForLog(/refused connection sid=\S+: unauthorized: the token expired/);
});

function readSecret() {
  return execFileSync('cat', [secretFile]).toString().trim();
}

test("a vendor may not join, order for or read another store's queue, nor report deliveries", async () => {
  // Globex has a delivered notice waiting in its queue.
  const globex = await connectClient(url, { auth: { token: token('vendor', '--store', 'globex') } });
  const driver = await connectClient(url, { auth: { token: token('driver', '--name', 'gdriver') } });
  const theirs = order('globex');
  const offered = nextEvent(driver, 'pickup');
  await emitWithAck(globex, 'pickup', theirs);
  await offered;
  await emitWithAck(driver, 'in-transit', theirs);
  const told = nextEvent(globex, 'delivered');
  await emitWithAck(driver, 'delivered', theirs);
  const { messageId } = await told;
  globex.close();
  driver.close();

  await survives(async () => {
    const intruder = await connectClient(url, { auth: { token: token('vendor', '--store', 'acme') } });
    const attempts = [
      ['join', 'globex'],
      ['join', { store: 'globex' }],
      ['pickup', order('globex')],
      ['getAll', { queueId: 'globex', event: 'delivered' }],
      ['received', { queueId: 'globex', event: 'delivered', messageId }],
      ['received', { clientId: 'globex', event: 'delivered', messageId: theirs.orderId }],
      ['delivered', theirs],
      ['in-transit', theirs],
    ];
    const replayed = [];
    intruder.on('delivered', (payload) => replayed.push(payload));
    for (const [event, payload] of attempts) {
      const reply = await emitWithAck(intruder, event, payload);
      assert.equal(reply.ok, false, `${event} ${JSON.stringify(payload)}`);
      assert.equal(reply.error.code, 'forbidden', `${event}: ${reply.error.message}`);
    }
    assert.deepEqual(replayed, [], "globex's notices were not replayed to acme");
    intruder.close();
  });
  await hub.waitForLog(/refused \w+ sid=\S+ vendor store=acme: forbidden/);
});

test("a driver may not move another driver's package; a viewer may only read", async () => {
  const vendor = await connectClient(url, { auth: { token: token('vendor', '--store', 'acme') } });
  const owner = await connectClient(url, { auth: { token: token('driver', '--name', 'owner') } });
  const placed = order('acme');
  const offered = nextEvent(owner, 'pickup');
  await emitWithAck(vendor, 'pickup', placed);
  await offered;

  await survives(async () => {
    const thief = await connectClient(url, { auth: { token: token('driver', '--name', 'thief') } });
    for (const event of ['in-transit', 'delivered']) {
      const reply = await emitWithAck(thief, event, placed);
      assert.equal(reply.error.code, 'not_assigned', event);
    }
    thief.close();
    const viewer = await connectClient(url, { auth: { token: token('viewer') } });
    for (const [event, payload] of [['pickup', order('acme')], ['join', 'acme'], ['delivered', placed]]) {
      assert.equal((await emitWithAck(viewer, event, payload)).error.code, 'forbidden', event);
    }
    viewer.close();
  });
  // The owner can still finish it.
  assert.deepEqual(await emitWithAck(owner, 'in-transit', placed), { ok: true });
  assert.deepEqual(await emitWithAck(owner, 'delivered', placed), { ok: true });
  vendor.close();
  owner.close();
});

test('oversized and deeply nested payloads are refused', async () => {
  await survives(async () => {
    const vendor = await connectClient(url, { auth: { token: token('vendor', '--store', 'acme') } });
    let deep = 'x';
    for (let i = 0; i < 1000; i += 1) deep = [deep];
    assert.equal((await emitWithAck(vendor, 'pickup', order('acme', { note: 'x'.repeat(50_000) }))).error.code, 'payload_too_large');
    assert.equal((await emitWithAck(vendor, 'pickup', order('acme', { customer: deep }))).error.code, 'invalid_payload');
    vendor.close();
  });
});

test('10,000 events in a burst are cut off, and the flooder is disconnected', async () => {
  await survives(async () => {
    const flooder = await connectClient(url, { auth: { token: token('vendor', '--store', 'acme') } });
    const dropped = nextEvent(flooder, 'disconnect', 15_000);
    for (let i = 0; i < 10_000; i += 1) flooder.emit('getAll', { queueId: 'acme' });
    // A DISCONNECT packet, or, when the flooder's outgoing buffer is already
    // full of refusals, the transport closed under it.
    assert.ok(['io server disconnect', 'transport close'].includes(await dropped));
  });
  // The first getAll is replayed; the rest are refused, busy (one replay per
  // connection) within the burst, rate_limited beyond it: a line a second.
  await hub.waitForLog(/refused getAll sid=\S+ vendor store=acme: (busy|rate_limited)/);
  await hub.waitForLog(/disconnecting sid=\S+ vendor store=acme: it keeps sending over its rate limit/);
  // Every refusal is counted; the log has a line a second for the flooder, not one each.
  const metrics = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${token('viewer')}` } })).text();
  const refused = Number(metrics.match(/caps_refusals_total\{code="rate_limited"\} (\d+)/)[1]);
  const lines = hub.err.matching(/refused getAll sid=\S+ vendor store=acme: (busy|rate_limited)/).length;
  assert.ok(refused >= 50, `${refused} refusals counted`);
  assert.ok(lines <= 5, `${lines} log lines for ${refused} refusals`);
});

test('thousands of connections opened and dropped leave the hub serving', async () => {
  await survives(async () => {
    for (let batch = 0; batch < 10; batch += 1) {
      const sockets = Array.from({ length: 200 }, () => io(`${url}/caps`, {
        transports: ['websocket'],
        reconnection: false,
        forceNew: true,
        auth: batch % 2 ? { token: 'junk' } : {},
      }));
      await Promise.all(sockets.map((socket) => new Promise((resolve) => {
        socket.once('connect_error', resolve);
        socket.once('connect', resolve);
      })));
      sockets.forEach((socket) => socket.close());
    }
    // Session openings beyond the door's rate were refused; honest clients
    // (here, from the same address) are served again once its bucket refills.
    await waitUntilServed();
  });
});

test('metrics are for viewers and operators only when the hub has a secret', async () => {
  const scrape = (bearer) => fetch(`${url}/metrics`, bearer ? { headers: { authorization: `Bearer ${bearer}` } } : {});
  const anonymous = await scrape();
  assert.equal(anonymous.status, 401);
  assert.equal((await anonymous.json()).error.code, 'unauthorized');
  const vendor = await scrape(token('vendor', '--store', 'acme'));
  assert.equal(vendor.status, 403);
  assert.equal((await vendor.json()).error.code, 'forbidden');
  for (const role of ['viewer', 'operator']) {
    const allowed = await scrape(token(role));
    assert.equal(allowed.status, 200);
    assert.match(await allowed.text(), /^# HELP caps_/m);
  }
});

test('a socket is disconnected when its token expires, and told why', async () => {
  await survives(async () => {
    const now = Math.floor(Date.now() / 1000);
    const shortLived = jwt({ role: 'driver', name: 'mayfly', iat: now, exp: now + 2 }, readSecret());
    const driver = await connectClient(url, { auth: { token: shortLived } });
    const goodbye = nextEvent(driver, 'goodbye', 20_000);
    const dropped = nextEvent(driver, 'disconnect', 20_000);
    assert.deepEqual(await goodbye, {
      code: 'unauthorized',
      message: 'the token expired; connect again with a new one',
    });
    assert.equal(await dropped, 'io server disconnect');
    assert.ok(Date.now() / 1000 >= now + 1, 'dropped before its expiry');
    // Coming back with the same token is refused.
    assert.match(await refusedAtConnect({ token: shortLived }), /^unauthorized: the token expired/);
  });
  await hub.waitForLog(/disconnecting sid=\S+ driver name=mayfly: its token expired/);
});

test('a store named like an internal room hears nothing of other stores', async () => {
  const viewer = await connectClient(url, { auth: { token: token('viewer') } });
  const squatters = await Promise.all(['viewers', 'hub:viewers'].map((store) =>
    connectClient(url, { auth: { token: token('vendor', '--store', store) } })));
  const overheard = [];
  for (const squatter of squatters) {
    squatter.onAny((event, payload) => overheard.push({ event, payload }));
    // Joining its own store's room by name changes nothing either.
  }
  try {
    const seen = nextEvent(viewer, 'activity');
    await legitimateFlowWorks();
    await seen; // the flow did produce activity, for viewers
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(overheard, []);
  } finally {
    viewer.close();
    squatters.forEach((socket) => socket.close());
  }
});
