// The hub's door, on a hub in open mode as a developer runs it on their
// machine: a web page on another name (DNS rebinding) or another origin
// gets nothing, connections count from their first byte, per address, and
// the API is rate limited. After each, the board is unchanged and an honest
// vendor and driver still complete their flow.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { io } from 'socket.io-client';
import { honestDelivery, startHub } from './support.mjs';

let hub;
let url;
let port;

const order = (store) => ({
  store,
  orderId: `order-${Math.random().toString(36).slice(2)}`,
  customer: 'Jamal Braun',
  address: 'Schmittfurt, LA',
});

/** One HTTP request with exactly these headers (Host included); resolves to status and JSON body. */
function request(method, requestPath, headers = {}, body = undefined, at = port) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: at, method, path: requestPath, headers, agent: false },
      (res) => {
        let text = '';
        res.on('data', (chunk) => { text += chunk; });
        res.on('end', () => {
          let json;
          try { json = JSON.parse(text); } catch { json = undefined; }
          resolve({ status: res.statusCode, body: json, text });
        });
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.end(JSON.stringify(body)); else req.end();
  });
}

async function essentials() {
  const status = await (await fetch(`${url}/api/status`)).json();
  return {
    orders: status.orders,
    open: status.openOrders.map(({ orderId, state, driver }) => ({ orderId, state, driver })),
    queues: status.queues,
  };
}

function honestFlowWorks() {
  return honestDelivery(url, {
    vendorAuth: { role: 'vendor', store: 'acme' },
    driverAuth: { role: 'driver', name: 'honest' },
  });
}

async function survives(attack) {
  const beforeAttack = await essentials();
  await attack();
  assert.deepEqual(await essentials(), beforeAttack, 'the attack changed the board');
  await honestFlowWorks();
}

async function refusals(code) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`caps_refusals_total{code="${code}"}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

before(async () => {
  ({ hub, url } = await startHub(['--max-connections-per-address', '40', '--api-rate-limit', '20']));
  port = Number(new URL(url).port);
  await honestFlowWorks();
});

after(async () => {
  await hub.kill();
});

test('a page on a rebound name can neither call the API nor open a session', async () => {
  const evil = `evil.example:${port}`;
  const counted = await refusals('host_not_allowed');
  await survives(async () => {
    const placed = await request('POST', '/api/orders',
      { host: evil, origin: `http://${evil}`, 'content-type': 'application/json' }, order('acme'));
    assert.equal(placed.status, 421);
    assert.equal(placed.body.error.code, 'host_not_allowed');
    const read = await request('GET', '/api/status', { host: evil, origin: `http://${evil}` });
    assert.equal(read.status, 421);
    const handshake = await request('GET', '/socket.io/?EIO=4&transport=polling', { host: evil, origin: `http://${evil}` });
    assert.equal(handshake.status, 421);
    assert.doesNotMatch(handshake.text, /"sid"/);
    const page = await request('GET', '/', { host: evil });
    assert.equal(page.status, 421);
  });
  assert.equal(await refusals('host_not_allowed'), counted + 4);
  // The names it is allowed by: its address and localhost.
  assert.equal((await request('GET', '/api/status', { host: `localhost:${port}` })).status, 200);
  assert.equal((await request('GET', '/api/status', { host: `127.0.0.1:${port}`, origin: `http://127.0.0.1:${port}` })).status, 200);
});

test('a page from another origin is refused, over HTTP and Socket.IO', async () => {
  const own = `127.0.0.1:${port}`;
  await survives(async () => {
    const placed = await request('POST', '/api/orders',
      { host: own, origin: 'http://evil.example', 'content-type': 'application/json' }, order('acme'));
    assert.equal(placed.status, 403);
    assert.equal(placed.body.error.code, 'origin_not_allowed');
    const socket = io(`${url}/caps`, {
      transports: ['polling'],
      reconnection: false,
      extraHeaders: { origin: 'http://evil.example' },
      auth: { role: 'vendor', store: 'acme' },
    });
    const error = await new Promise((resolve) => {
      socket.once('connect', () => resolve(null));
      socket.once('connect_error', resolve);
    });
    socket.close();
    assert.ok(error, 'the socket connected');
  });
});

test('connections count from their first byte, per address', async () => {
  await survives(async () => {
    // 40 TCP connections that never say a word (nor open a session).
    const silent = await Promise.all(
      Array.from({ length: 40 }, () => new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
        socket.on('error', reject);
      })),
    );
    try {
      // Give the hub time to accept them all: wait until one more is turned away.
      const turnedAway = await new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1');
        let text = '';
        socket.on('data', (chunk) => { text += chunk; });
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
      assert.match(turnedAway, /^HTTP\/1\.1 503/);
      assert.match(turnedAway, /"code":"too_many_connections"/);
      const refused = await request('GET', '/api/status', { host: `127.0.0.1:${port}` });
      assert.equal(refused.status, 503, 'a request on a new connection was served');
      assert.equal(refused.body.error.code, 'too_many_connections');
    } finally {
      for (const socket of silent) socket.destroy();
    }
    // Closed connections free their places.
    const deadline = Date.now() + 5_000;
    for (;;) {
      const ok = await fetch(`${url}/api/status`).then((r) => r.ok, () => false);
      if (ok) break;
      assert.ok(Date.now() < deadline, 'the places were never freed');
      await new Promise((r) => setTimeout(r, 50));
    }
  });
});

test('the API and session openings are rate limited per address, with 429 and the usual error shape', async (t) => {
  // A hub of its own, so that its bucket starts full and no other test spends it.
  const limited = await startHub(['--api-rate-limit', '5']);
  t.after(() => limited.hub.kill());
  const at = Number(new URL(limited.url).port);
  const host = { host: `127.0.0.1:${at}` };
  const statuses = [];
  for (let i = 0; i < 30; i += 1) {
    const res = await request('GET', '/api/status', host, undefined, at);
    statuses.push(res.status);
    if (res.status === 429) {
      assert.equal(res.body.error.code, 'rate_limited');
      break;
    }
  }
  assert.ok(statuses.includes(429), `never limited: ${statuses}`);
  assert.ok(statuses.filter((s) => s === 200).length >= 9, `a burst of twice the rate is served: ${statuses}`);
  // Opening a Socket.IO session draws on the same bucket, now empty: it is
  // refused at once, or after the few tokens that trickled back meanwhile
  // (on a busy machine a request can take longer than a refill), never after
  // a burst of its own.
  const opened = [];
  for (let i = 0; i < 30; i += 1) {
    const handshake = await request('GET', '/socket.io/?EIO=4&transport=polling', host, undefined, at);
    if (handshake.status === 429) {
      assert.equal(handshake.body.error.code, 'rate_limited');
      break;
    }
    opened.push(handshake.status);
  }
  assert.ok(opened.length < 9, `session openings had a bucket of their own: ${opened.length} opened`);
});
