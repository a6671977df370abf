// The hub's protocol seen through the official socket.io client: routing,
// acknowledgements, refusals of bad input, and the connect race.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { arrives, connectClient, emitWithAck, nextEvent, orderOf, startHub } from './support.mjs';

const order = (overrides = {}) => ({
  store: 'acme',
  orderId: `order-${Math.random().toString(36).slice(2)}`,
  customer: 'Jamal Braun',
  address: 'Schmittfurt, LA',
  ...overrides,
});


test('a pickup reaches one driver and no vendor; its news reaches only its own store', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = await connectClient(url, { auth: { role: 'driver', name: 'bob' } });
  const acme = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  const other = await connectClient(url);
  t.after(() => [driver, acme, other].forEach((s) => s.close()));
  assert.deepEqual(await emitWithAck(other, 'join', 'globex'), { ok: true });

  const placed = order();
  const driverHears = nextEvent(driver, 'pickup');
  const acmeHearsPickup = arrives(acme, 'pickup');
  const otherHearsPickup = arrives(other, 'pickup');
  assert.deepEqual(await emitWithAck(acme, 'pickup', placed), { ok: true });
  assert.deepEqual(await driverHears, placed);
  assert.equal(await acmeHearsPickup, false, 'a vendor must not hear pickups');
  assert.equal(await otherHearsPickup, false, 'a lab vendor that joined must not hear pickups');

  for (const event of ['in-transit', 'delivered']) {
    const acmeHears = nextEvent(acme, event);
    const otherHears = arrives(other, event);
    assert.deepEqual(await emitWithAck(driver, event, placed), { ok: true });
    assert.deepEqual(orderOf(await acmeHears), placed);
    assert.equal(await otherHears, false, `another store must not hear acme's ${event}`);
  }
});

test('orderID is accepted and orderId is what the hub sends on', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = await connectClient(url, { auth: { role: 'driver', name: 'bob' } });
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  t.after(() => [driver, vendor].forEach((s) => s.close()));
  const { orderId, ...rest } = order();
  const heard = nextEvent(driver, 'pickup');
  assert.deepEqual(await emitWithAck(vendor, 'pickup', { ...rest, orderID: orderId }), { ok: true });
  assert.deepEqual(await heard, { ...rest, orderId });
});

test('join accepts a bare store id or {store}, and refuses anything else', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const bare = await connectClient(url);
  const object = await connectClient(url);
  t.after(() => [bare, object].forEach((s) => s.close()));
  assert.deepEqual(await emitWithAck(bare, 'join', '1-206-flowers'), { ok: true });
  assert.deepEqual(await emitWithAck(object, 'join', { store: 'acme-widgets' }), { ok: true });
  assert.deepEqual(await emitWithAck(bare, 'join', '1-206-flowers'), { ok: true }, 'joining again is fine');
  for (const bad of [42, '', { room: 'acme' }, { store: 7 }, null]) {
    const reply = await emitWithAck(bare, 'join', bad);
    assert.equal(reply.ok, false, JSON.stringify(bad));
    assert.equal(reply.error.code, 'invalid_payload');
    assert.ok(reply.error.message.length > 0);
  }
  // A socket that joined a store is that store's vendor, and only that store's.
  const other = await emitWithAck(bare, 'join', 'acme-widgets');
  assert.equal(other.error.code, 'forbidden');
});

test('malformed payloads are refused with a clear error and the hub keeps serving', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = await connectClient(url, { auth: { role: 'driver', name: 'bob' } });
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  t.after(() => [driver, vendor].forEach((s) => s.close()));

  let deep = 'x';
  for (let i = 0; i < 1000; i += 1) deep = [deep];
  const { store: _store, ...withoutStore } = order();
  const cases = [
    ['a missing field', withoutStore, 'invalid_payload', /store/],
    ['an empty field', order({ customer: '' }), 'invalid_payload', /customer must not be empty/],
    ['a number for a string', order({ address: 7 }), 'invalid_payload', /invalid type/],
    ['a string instead of an object', 'pickup please', 'invalid_payload', /./],
    ['an array instead of an object', [order()], 'invalid_payload', /./],
    ['a deeply nested value', order({ customer: deep }), 'invalid_payload', /recursion|invalid type/],
    ['an overlong field', order({ address: 'a'.repeat(301) }), 'invalid_payload', /at most 300/],
    ['an oversized payload', order({ note: 'x'.repeat(100_000) }), 'payload_too_large', /limit is 16384 bytes/],
  ];
  for (const [label, payload, code, message] of cases) {
    const reply = await emitWithAck(vendor, 'pickup', payload);
    assert.equal(reply.ok, false, label);
    assert.equal(reply.error.code, code, label);
    assert.match(reply.error.message, message, label);
  }
  const noPayload = await emitWithAck(vendor, 'pickup');
  assert.equal(noPayload.error.code, 'invalid_payload');
  const unknown = arrives(driver, 'pickup', 200);
  vendor.emit('no-such-event', { hello: 'world' });
  assert.equal(await unknown, false);

  // Refused events were not routed, and good ones still are.
  const good = order();
  const heard = nextEvent(driver, 'pickup');
  assert.deepEqual(await emitWithAck(vendor, 'pickup', good), { ok: true });
  assert.deepEqual(await heard, good);
  // A refusal is logged (one line a second per connection, with a count of
  // the others), and every refusal is counted by its code.
  await hub.waitForLog(/refused pickup sid=\S+ vendor store=acme: invalid_payload/);
  const metrics = await (await fetch(`${url}/metrics`)).text();
  assert.match(metrics, /caps_refusals_total\{code="payload_too_large"\} 1/);
  assert.match(metrics, /caps_refusals_total\{code="invalid_payload"\} 8\n/);
  // The log is written in order: once the good pickup's line is there, any
  // refused event that had been logged would be there too.
  await hub.waitForLine(new RegExp(`^EVENT .*${good.orderId}`));
  assert.equal(hub.matching(/^EVENT /).length, 1, 'only the good pickup is logged');
});

test('a message over the transport limit drops only that client', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const bystander = await connectClient(url, { auth: { role: 'driver', name: 'bob' } });
  const flooder = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  t.after(() => [bystander, flooder].forEach((s) => s.close()));
  const dropped = nextEvent(flooder, 'disconnect');
  flooder.emit('pickup', order({ note: 'x'.repeat(2 * 1024 * 1024) }));
  await dropped;

  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  t.after(() => vendor.close());
  const good = order();
  const heard = nextEvent(bystander, 'pickup');
  assert.deepEqual(await emitWithAck(vendor, 'pickup', good), { ok: true });
  assert.deepEqual(await heard, good);
});

test('an invalid handshake is refused at connect with a clear message', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  for (const [auth, message] of [
    [{ role: 'vendor' }, /invalid_handshake: a vendor handshake needs a store/],
    [{ role: 'admin' }, /invalid_handshake: invalid handshake auth/],
    [{ role: 'driver', name: '' }, /name must not be empty/],
  ]) {
    await assert.rejects(connectClient(url, { auth }), (error) => {
      assert.match(error.message, message);
      return true;
    });
  }
});

test('events sent the moment a client connects are never dropped', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const clients = Array.from({ length: 60 }, () => io(`${url}/caps`, { transports: ['websocket'], reconnection: false, forceNew: true }));
  t.after(() => clients.forEach((s) => s.close()));
  // The official client buffers these and sends them right after CONNECT.
  const replies = await Promise.all(clients.map((socket, i) => emitWithAck(socket, 'join', `store-${i}`)));
  assert.equal(replies.filter((reply) => reply.ok).length, 60);
});

test('browser pages from other origins may connect only when allowed', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const from = (origin) => ({ extraHeaders: { origin } });
  // Refused before any session exists: the handshake itself is a 403.
  await assert.rejects(connectClient(url, from('http://evil.example')));
  const handshake = await fetch(`${url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: 'http://evil.example' } });
  assert.equal(handshake.status, 403);
  assert.match((await handshake.json()).error.message, /pages from http:\/\/evil.example may not call this hub/);
  (await connectClient(url, from(url))).close(); // the hub's own pages

  const open = await startHub(['--cors-origin', 'http://shop.example,http://other.example']);
  t.after(() => open.hub.kill());
  (await connectClient(open.url, from('http://shop.example'))).close();
  await assert.rejects(connectClient(open.url, from('http://evil.example')));
  const preflight = await fetch(`${open.url}/api/status`, { headers: { origin: 'http://shop.example' } });
  assert.equal(preflight.headers.get('access-control-allow-origin'), 'http://shop.example');
});
