// The course's Phase 3 check against `caps hub`: stop a vendor, deliver more
// orders for it, restart it, and it immediately receives everything queued;
// acknowledged notices do not come back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Proc, capsBin, connectClient, emitWithAck, labScript, startHub } from './support.mjs';

async function board(url) {
  return (await fetch(`${url}/api/status`)).json();
}

async function waitForBoard(url, ready, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await board(url);
    if (ready(status)) return status;
    if (Date.now() > deadline) throw new Error(`hub never reached: ${what}\n${JSON.stringify(status)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const phase3Vendor = (url) => new Proc('node', [labScript('vendor-phase3.mjs')], {
  CAPS_URL: `${url}/caps`, STORE: '1-206-flowers', TRANSPORTS: 'websocket',
});

test("the course's Phase 3 vendor gets what was delivered while it was away", async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = new Proc(capsBin, ['driver', '--hub', url, '--name', 'bob', '--pickup-delay', '5ms', '--deliver-delay', '5ms']);
  t.after(() => driver.kill());

  // The vendor is stopped; someone places three orders for its store.
  const shop = await connectClient(url, { auth: { role: 'vendor', store: '1-206-flowers' } });
  const ids = ['p3-a', 'p3-b', 'p3-c'];
  for (const orderId of ids) {
    const order = { store: '1-206-flowers', orderId, customer: 'Jamal Braun', address: 'Schmittfurt, LA' };
    assert.deepEqual(await emitWithAck(shop, 'pickup', order), { ok: true });
  }
  shop.close();
  await waitForBoard(url, (s) => s.orders.delivered === 3 && s.queues[0]?.queued === 3, 'three queued notices');

  // The vendor starts: it asks for everything queued and logs it normally.
  const vendor = phase3Vendor(url);
  t.after(() => vendor.kill());
  await vendor.waitForCount(/^VENDOR: Thank you for delivering p3-/, 3);
  assert.deepEqual(vendor.matching(/^VENDOR: Thank you/).map((l) => l.split(' ').pop()).sort(), ids);
  await waitForBoard(url, (s) => s.queues.length === 0, 'every notice acknowledged');
  await vendor.kill();

  // Acknowledged notices do not come back.
  const again = phase3Vendor(url);
  t.after(() => again.kill());
  await again.waitForLine(/^VENDOR: connected$/);
  const reply = await emitWithAck(await connectClient(url), 'getAll', { queueId: '1-206-flowers' });
  assert.deepEqual(reply, { ok: true, sent: 0 });
  assert.equal(again.matching(/^VENDOR: Thank you/).length, 0);
});

test('received and getAll refuse what they cannot act on', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  t.after(() => vendor.close());
  const reply = await emitWithAck(vendor, 'received', { queueId: 'acme', event: 'delivered', messageId: 'nope' });
  assert.equal(reply.error.code, 'unknown_message');
  const missing = await emitWithAck(vendor, 'received', { queueId: 'acme', event: 'delivered' });
  assert.equal(missing.error.code, 'invalid_payload');
  const malformed = await emitWithAck(vendor, 'getAll', { event: 'delivered' });
  assert.equal(malformed.error.code, 'invalid_payload');
});

test('getAll and received accept the store under every name the course uses', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = new Proc(capsBin, ['driver', '--hub', url, '--name', 'bob', '--pickup-delay', '5ms', '--deliver-delay', '5ms']);
  t.after(() => driver.kill());
  const placer = await connectClient(url, { auth: { role: 'vendor', store: 's' } });
  t.after(() => placer.close());
  for (const orderId of ['v-1', 'v-2', 'v-3']) {
    const order = { store: 's', orderId, customer: 'Jamal Braun', address: 'Schmittfurt, LA' };
    assert.deepEqual(await emitWithAck(placer, 'pickup', order), { ok: true });
  }
  await waitForBoard(url, (s) => s.queues[0]?.queued === 3, 'three queued notices');

  // A course vendor (no handshake) that names its store three ways at once.
  const vendor = await connectClient(url);
  t.after(() => vendor.close());
  const replayed = [];
  vendor.on('delivered', (notice) => replayed.push(notice));
  assert.deepEqual(await emitWithAck(vendor, 'getAll', { store: 's', queueId: 's', clientId: 's' }), { ok: true, sent: 3 });
  assert.equal(replayed.length, 3, 'the notices come before the acknowledgement');
  const [first, second, third] = replayed;
  assert.deepEqual(await emitWithAck(vendor, 'received', {
    store: 's', queueId: 's', clientId: 's', event: 'delivered', messageId: first.messageId, orderId: first.orderId,
  }), { ok: true });
  // By the order's id alone, as older course code does.
  assert.deepEqual(await emitWithAck(vendor, 'received', { clientId: 's', event: 'delivered', orderId: second.orderId }), { ok: true });
  assert.deepEqual(await emitWithAck(vendor, 'received', { store: 's', messageID: third.messageId }), { ok: true });
  await waitForBoard(url, (s) => s.queues.length === 0, 'every notice acknowledged');

  const disagree = await emitWithAck(vendor, 'getAll', { store: 's', queueId: 'other' });
  assert.equal(disagree.error.code, 'invalid_payload');
  assert.match(disagree.error.message, /different stores/);
});


test('getAll replays every queued notice, however many, and says how many', async (t) => {
  const { hub, url } = await startHub(['--rate-limit', '100000']);
  t.after(() => hub.kill());
  // A driver that takes every package up and delivers it at once.
  const driver = await connectClient(url, { auth: { role: 'driver', name: 'quick' } });
  t.after(() => driver.close());
  driver.on('pickup', (order) => {
    driver.emit('in-transit', order);
    driver.emit('delivered', order);
  });
  const placer = await connectClient(url, { auth: { role: 'vendor', store: 'many' } });
  t.after(() => placer.close());
  const total = 2500;
  const placed = [];
  for (let i = 0; i < total; i += 1) {
    const order = { store: 'many', orderId: `m-${i}`, customer: 'Jamal Braun', address: 'Schmittfurt, LA' };
    placed.push(emitWithAck(placer, 'pickup', order));
  }
  await Promise.all(placed);
  await waitForBoard(url, (s) => s.queues[0]?.queued === total, `${total} queued notices`, 60_000);

  // Far more than a socket's buffer (1,024 messages) holds at once.
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'many' } });
  t.after(() => vendor.close());
  const replayed = new Set();
  vendor.on('delivered', (notice) => replayed.add(notice.orderId));
  const reply = await vendor.timeout(60_000).emitWithAck('getAll', { queueId: 'many' });
  assert.deepEqual(reply, { ok: true, sent: total });
  assert.equal(replayed.size, total, 'every notice, each once');
});
