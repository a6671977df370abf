// Clients that flood and never read, at the hub's default limits: what they
// ask for costs the hub a bounded amount whatever the queue's length, honest
// clients are served meanwhile, and a client the hub decides to close is
// closed even when its buffer has no room for a goodbye.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { connectClient, emitWithAck, honestDelivery, startHub } from './support.mjs';

let hub;
let url;
// More than a socket's buffer (1,024 messages) and the kernel's buffers
// hold, so that a replay to a connection that does not read must wait.
const QUEUED = 5_000;

/** The hub's resident memory, in MiB. */
function rssMiB() {
  const status = readFileSync(`/proc/${hub.child.pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+) kB/)[1]) / 1024;
}

/** A gauge from /metrics, or null if the scrape was not answered with it. */
async function metric(name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const found = text.match(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm'));
  return found ? Number(found[1]) : null;
}

/** Polls `check` until it holds, for at most `timeoutMs`. */
async function eventually(check, timeoutMs, describe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    assert.ok(Date.now() < deadline, describe());
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Sends until the hub takes it; refusals for load are waited out. */
async function takenUp(socket, event, payload) {
  for (;;) {
    const answer = await emitWithAck(socket, event, payload);
    if (answer.ok) return;
    assert.ok(['busy', 'rate_limited'].includes(answer.error.code), `${event}: ${JSON.stringify(answer)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/**
 * Delivers `count` orders of `store` without acknowledging their notices, so
 * that its queue holds `count`: several vendors and drivers, each under the
 * hub's default rate limit.
 */
async function fillQueue(store, count) {
  const vendors = await Promise.all(Array.from({ length: 10 }, () =>
    connectClient(url, { auth: { role: 'vendor', store } })));
  const drivers = await Promise.all(Array.from({ length: 8 }, (_, i) =>
    connectClient(url, { auth: { role: 'driver', name: `filler-${i}`, capacity: 50 } })));
  for (const driver of drivers) {
    // One package at a time, as a courier works: reports in parallel would
    // pass the rate limit and get the courier dropped as a flooder.
    let work = Promise.resolve();
    driver.on('pickup', (order) => {
      work = work.then(async () => {
        await takenUp(driver, 'in-transit', order);
        await takenUp(driver, 'delivered', order);
      });
    });
  }
  try {
    const padding = 'x'.repeat(180);
    await Promise.all(vendors.map(async (vendor, v) => {
      for (let i = v; i < count; i += vendors.length) {
        const placed = { store, orderId: `fill-${i}`, customer: `Customer ${padding}`, address: `Street ${padding}` };
        await takenUp(vendor, 'pickup', placed);
      }
    }));
    await eventually(async () => {
      const status = await (await fetch(`${url}/api/status`)).json();
      return status.queues.some((queue) => queue.store === store && queue.queued === count);
    }, 60_000, () => `the queue of ${store} never reached ${count}`);
  } finally {
    [...vendors, ...drivers].forEach((socket) => socket.close());
  }
}

/**
 * A raw Socket.IO client over WebSocket that connects to /caps as `auth`
 * and then stops reading: whatever the hub sends it piles up.
 */
async function silentClient(auth) {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const joined = new Promise((resolve, reject) => {
    ws.on('error', reject);
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('0')) ws.send(`40/caps,${JSON.stringify(auth)}`);
      if (text.startsWith('40/caps,')) resolve();
      if (text.startsWith('44/caps,')) reject(new Error(text));
    });
  });
  await joined;
  ws.removeAllListeners('message');
  ws.on('error', () => {});
  ws._socket.pause();
  // ws resumes its socket whenever its parser drains: keep it stopped, so
  // that nothing more is read from the hub.
  ws._socket.resume = () => ws._socket;
  let ackId = 0;
  return {
    ws,
    emit(event, payload) {
      ackId += 1;
      ws.send(`42/caps,${ackId}${JSON.stringify([event, payload])}`);
    },
  };
}

before(async () => {
  ({ hub, url } = await startHub(['--replay-deadline', '10s']));
  await fillQueue('acme', QUEUED);
});

after(() => hub.kill());

test('getAll floods from clients that never read cost one page each, and honest clients are served', async () => {
  const before = rssMiB();
  const flooders = await Promise.all([1, 2].map(() => silentClient({ role: 'vendor', store: 'acme' })));
  let sent = 0;
  const flooding = setInterval(() => {
    for (const flooder of flooders) flooder.emit('getAll', { queueId: 'acme' });
    sent += flooders.length;
  }, 10); // 100 a second each, under the default rate limit of 200
  try {
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const started = Date.now();
    await honestDelivery(url, {
      vendorAuth: { role: 'vendor', store: 'globex' },
      driverAuth: { role: 'driver', name: 'honest' },
      store: 'globex',
    });
    const honestMs = Date.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const grown = rssMiB() - before;
    // Before replays were paged, each getAll copied the queue (about 600 kB
    // here) and kept it until the socket read it: hundreds of MiB by now.
    assert.ok(grown < 40, `the hub grew ${grown.toFixed(1)} MiB for ${sent} getAll`);
    assert.ok(honestMs < 5_000, `an honest delivery took ${honestMs} ms during the flood`);
  } finally {
    clearInterval(flooding);
    flooders.forEach((flooder) => flooder.ws.terminate());
  }
  // Nothing the flooders asked for stays pending once they are gone.
  await eventually(async () => (await metric('caps_pending_events')) === 0, 15_000,
    () => 'events still pending after the flooders left');
});

test('a getAll while a replay to the same connection is under way is refused busy; the next is served', async () => {
  const vendor = await connectClient(url, { auth: { role: 'vendor', store: 'acme' } });
  try {
    let heard = 0;
    vendor.on('delivered', () => { heard += 1; });
    const first = emitWithAck(vendor, 'getAll', { queueId: 'acme' });
    // Each refusal leaves the replay under way alone: the third is refused too.
    for (const again of [1, 2]) {
      const refused = await emitWithAck(vendor, 'getAll', { queueId: 'acme' });
      assert.equal(refused.ok, false, `getAll number ${again + 1}`);
      assert.equal(refused.error.code, 'busy');
      assert.match(refused.error.message, /replay to this connection is under way/);
    }
    assert.deepEqual(await first, { ok: true, sent: QUEUED });
    assert.equal(heard, QUEUED);
    assert.deepEqual(await emitWithAck(vendor, 'getAll', { queueId: 'acme' }), { ok: true, sent: QUEUED });
  } finally {
    vendor.close();
  }
});

test('a replay that outlasts its deadline stops, and says how far it got', async () => {
  // A hub of its own with a deadline shorter than one page takes to send.
  const short = await startHub(['--replay-deadline', '1ms']);
  try {
    const vendor = await connectClient(short.url, { auth: { role: 'vendor', store: 'acme' } });
    const driver = await connectClient(short.url, { auth: { role: 'driver', name: 'quick', capacity: 200 } });
    let work = Promise.resolve();
    driver.on('pickup', (order) => {
      work = work.then(async () => {
        await takenUp(driver, 'in-transit', order);
        await takenUp(driver, 'delivered', order);
      });
    });
    for (let i = 0; i < 150; i += 1) {
      await takenUp(vendor, 'pickup', { store: 'acme', orderId: `short-${i}`, customer: 'Ann', address: 'Here' });
    }
    await eventually(async () => {
      const status = await (await fetch(`${short.url}/api/status`)).json();
      return status.queues.some((queue) => queue.store === 'acme' && queue.queued === 150);
    }, 60_000, () => 'the queue never reached 150');
    const answer = await emitWithAck(vendor, 'getAll', { queueId: 'acme' });
    assert.equal(answer.ok, false, JSON.stringify(answer));
    assert.equal(answer.error.code, 'busy');
    const [, sent] = answer.error.message.match(/stopped at its deadline after (\d+) messages/);
    assert.ok(Number(sent) < 150, `${sent} sent before the deadline`);
    vendor.close();
    driver.close();
  } finally {
    await short.hub.kill();
  }
});

test('a flooder that never reads is cut off, with one line in the log', async () => {
  const flooder = await silentClient({ role: 'vendor', store: 'acme' });
  for (let i = 0; i < 10_000; i += 1) flooder.emit('getAll', { queueId: 'acme' });
  await hub.waitForLog(/disconnecting sid=\S+ vendor store=acme: it keeps sending over its rate limit/);
  const sid = hub.err.matching(/disconnecting sid=\S+ vendor store=acme: it keeps sending/).at(-1).match(/sid=(\S+)/)[1];
  // Closed by the hub, though the flooder has read nothing since.
  await hub.waitForLog(new RegExp(`disconnected sid=${sid} `), 15_000);
  flooder.ws.terminate();
  const lines = hub.err.matching(new RegExp(`disconnecting sid=${sid} `)).length;
  assert.equal(lines, 1, `${lines} lines about closing one flooder`);
});

test('the hub stops promptly on SIGTERM after the abuse', async () => {
  const started = Date.now();
  const { code } = await hub.kill('SIGTERM');
  assert.equal(code, 0);
  // Before replays were bounded it took 109 s. The figure on a quiet
  // machine is the abuse benchmark's (under a second); this bound holds with
  // other work on the machine too.
  assert.ok(Date.now() - started < 15_000, `the hub took ${Date.now() - started} ms to stop`);
});
