// Dispatch rules through the official socket.io client: each refusal returns
// its error code and leaves the hub's board unchanged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { arrives, connectClient, emitWithAck, nextEvent, orderOf, startHub } from './support.mjs';

const order = (overrides = {}) => ({
  store: 'acme',
  orderId: `order-${Math.random().toString(36).slice(2)}`,
  customer: 'Jamal Braun',
  address: 'Schmittfurt, LA',
  ...overrides,
});

async function board(url) {
  const response = await fetch(`${url}/api/status`);
  assert.equal(response.status, 200);
  return response.json();
}

/** The parts of the board a refusal must not change. */
function essentials(status) {
  return {
    orders: status.orders,
    open: status.openOrders.map(({ orderId, state, driver }) => ({ orderId, state, driver })),
    loads: status.drivers.map(({ name, load }) => ({ name, load })),
  };
}


test('each refusal has its code and changes nothing; repeats are idempotent', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  const alice = await connectClient(url, { auth: { role: 'driver', name: 'alice' } });
  const bob = await connectClient(url, { auth: { role: 'driver', name: 'bob' } });
  t.after(() => [vendor, alice, bob].forEach((s) => s.close()));

  const placed = order();
  const offered = Promise.race([
    nextEvent(alice, 'pickup').then(() => ({ holder: alice, other: bob, name: 'alice' })),
    nextEvent(bob, 'pickup').then(() => ({ holder: bob, other: alice, name: 'bob' })),
  ]);
  assert.deepEqual(await emitWithAck(vendor, 'pickup', placed), { ok: true });
  const { holder, other, name } = await offered;

  const before = essentials(await board(url));
  assert.deepEqual(before.open, [{ orderId: placed.orderId, state: 'assigned', driver: name }]);

  const refusals = [
    ['delivered before in-transit', holder, 'delivered', placed, 'out_of_order'],
    ["another driver's package", other, 'in-transit', placed, 'not_assigned'],
    ["another driver's delivery", other, 'delivered', placed, 'not_assigned'],
    ['an unknown orderId', holder, 'in-transit', order(), 'unknown_order'],
    ['a known orderId of another store', holder, 'in-transit', { ...placed, store: 'globex' }, 'unknown_order'],
    ['a pickup reusing the orderId with another payload', vendor, 'pickup', { ...placed, customer: 'Someone Else' }, 'order_conflict'],
  ];
  for (const [label, socket, event, payload, code] of refusals) {
    const reply = await emitWithAck(socket, event, payload);
    assert.equal(reply.ok, false, label);
    assert.equal(reply.error.code, code, label);
    assert.deepEqual(essentials(await board(url)), before, `${label} changed the board`);
  }
  await hub.waitForLog(/refused delivered sid=\S+ driver name=\w+: out_of_order/);

  // The same pickup again: acknowledged, not dispatched twice.
  const offeredAgain = Promise.all([arrives(alice, 'pickup'), arrives(bob, 'pickup')]);
  assert.deepEqual(await emitWithAck(vendor, 'pickup', placed), { ok: true });
  assert.deepEqual(await offeredAgain, [false, false]);
  assert.deepEqual(essentials(await board(url)), before);

  // The assigned driver moves it on; the store hears each step once.
  const inTransit = nextEvent(vendor, 'in-transit');
  assert.deepEqual(await emitWithAck(holder, 'in-transit', placed), { ok: true });
  assert.deepEqual(await inTransit, placed);
  const delivered = nextEvent(vendor, 'delivered');
  assert.deepEqual(await emitWithAck(holder, 'delivered', placed), { ok: true });
  const notice = await delivered;
  assert.deepEqual(orderOf(notice), placed);
  assert.deepEqual(notice.order, placed, 'the Phase 3 envelope nests the order');
  assert.equal(notice.queueId, 'acme');
  const repeatHeard = arrives(vendor, 'delivered');
  assert.deepEqual(await emitWithAck(holder, 'delivered', placed), { ok: true }, 'a repeat is acknowledged');
  assert.equal(await repeatHeard, false, 'and not relayed again');
  assert.equal((await board(url)).orders.delivered, 1);

  // A vendor that asks again about a delivered order is told again.
  const toldAgain = nextEvent(vendor, 'delivered');
  assert.deepEqual(await emitWithAck(vendor, 'pickup', placed), { ok: true });
  assert.deepEqual(orderOf(await toldAgain), placed);
});

test('a client that asks for no acknowledgement is sent a refused event', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = await connectClient(url, { auth: { role: 'driver', name: 'alice' } });
  t.after(() => driver.close());
  const stray = order();
  const refused = nextEvent(driver, 'refused');
  driver.emit('delivered', stray);
  assert.deepEqual(await refused, {
    event: 'delivered',
    store: 'acme',
    orderId: stray.orderId,
    error: { code: 'unknown_order', message: `no such order: store=acme order=${stray.orderId}` },
  });
  const malformed = nextEvent(driver, 'refused');
  driver.emit('in-transit', { store: 'acme' });
  const notice = await malformed;
  assert.equal(notice.event, 'in-transit');
  assert.equal(notice.error.code, 'invalid_payload');
});

test('an offer not taken up in time goes to another driver', async (t) => {
  const { hub, url } = await startHub(['--offer-timeout', '200ms']);
  t.after(() => hub.kill());
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  const sleepy = await connectClient(url, { auth: { role: 'driver', name: 'sleepy' } });
  t.after(() => [vendor, sleepy].forEach((s) => s.close()));
  const placed = order();
  const offeredToSleepy = nextEvent(sleepy, 'pickup');
  await emitWithAck(vendor, 'pickup', placed);
  await offeredToSleepy;

  const eager = await connectClient(url, { auth: { role: 'driver', name: 'eager' } });
  t.after(() => eager.close());
  assert.deepEqual(await nextEvent(eager, 'pickup', 3_000), placed);
  const late = await emitWithAck(sleepy, 'in-transit', placed);
  assert.equal(late.error.code, 'not_assigned');
  assert.deepEqual(await emitWithAck(eager, 'in-transit', placed), { ok: true });
  await hub.waitForLog(/offer expired store=acme order=\S+ driver=sleepy/);
});
