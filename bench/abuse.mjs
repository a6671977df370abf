// The abuse benchmark (docs/BENCHMARKS.md, "Abuse"): a durable `caps hub` at
// its default limits serves an honest load (a shop placing 100 orders a
// second, four couriers delivering each at once) for a quiet spell, then
// for as long again while clients that never read flood it with every kind
// of request: getAll on a 5,000-notice queue, pickup, received, engine.io
// pings, and HTTP reads. It prints the honest p50/p99 of both spells (one
// run, so their ratio is the figure), the hub's peak RSS, the most events
// pending, and how long the hub takes to exit on SIGTERM afterwards.
//
// Usage: node bench/abuse.mjs [--caps target/release/caps] [--seconds 60]
//   [--queued 5000] [--rate 100]
// Nothing here is a test: it fails only if the honest load loses an order.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

const { values: options } = parseArgs({
  options: {
    caps: { type: 'string', default: 'target/release/caps' },
    seconds: { type: 'string', default: '60' },
    queued: { type: 'string', default: '5000' },
    rate: { type: 'string', default: '100' },
    // Internal: run only the flood against this hub (in a process of its
    // own, so that it does not slow the honest shop's own event loop).
    flood: { type: 'string' },
    // Which floods: a comma-separated subset of getAll,pickup,received,pings,http.
    kinds: { type: 'string', default: 'getAll,pickup,received,pings,http' },
  },
});
const KINDS = new Set(options.kinds.split(','));
const SECONDS = Number(options.seconds);
const QUEUED = Number(options.queued);
const RATE = Number(options.rate);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const say = (line) => console.log(JSON.stringify(line));

function startHub() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'caps-abuse-'));
  const child = spawn(options.caps, ['hub', '--port', '0', '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, RUST_LOG: 'warn,caps=info' },
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  exited.then(() => rmSync(dataDir, { recursive: true, force: true }));
  const url = new Promise((resolve) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const found = line.match(/listening on (http:\/\/\S+)/);
      if (found) resolve(found[1]);
    });
  });
  return { child, exited, url };
}

function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+) kB/)[1]) / 1024;
}

function connect(url, auth) {
  return new Promise((resolve, reject) => {
    const socket = io(`${url}/caps`, { transports: ['websocket'], reconnection: false, forceNew: true, auth });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

const emit = (socket, event, payload) => socket.timeout(30_000).emitWithAck(event, payload);

/** Sends until the hub takes it, pausing when refused for load; false if refused for good. */
async function emitUntilTaken(socket, event, payload) {
  for (;;) {
    const answer = await emit(socket, event, payload).catch(() => ({ ok: false, error: { code: 'busy' } }));
    if (answer.ok) return true;
    if (!['busy', 'rate_limited'].includes(answer.error?.code)) return false;
    await sleep(200);
  }
}

/** Places orders until each is taken. */
async function placeAll(socket, orders) {
  for (const order of orders) await emitUntilTaken(socket, 'pickup', order);
}

/** Couriers that deliver each offer at once. */
async function couriers(url, prefix, count) {
  const drivers = await Promise.all(Array.from({ length: count }, (_, i) =>
    connect(url, { role: 'driver', name: `${prefix}-${i}`, capacity: 50 })));
  for (const driver of drivers) {
    // One package at a time, as a courier works: reports in parallel would
    // pass the rate limit and get the courier dropped for flooding.
    let work = Promise.resolve();
    driver.on('pickup', (order) => {
      work = work.then(async () => {
        if (await emitUntilTaken(driver, 'in-transit', order)) await emitUntilTaken(driver, 'delivered', order);
      });
    });
  }
  return drivers;
}

/** Fills `store`'s queue with `count` notices nobody acknowledges. */
async function fillQueue(url, store, count) {
  const drivers = await couriers(url, 'filler', 8);
  const vendors = await Promise.all(Array.from({ length: 10 }, () => connect(url, { role: 'vendor', store })));
  const padding = 'x'.repeat(150);
  await Promise.all(vendors.map((vendor, v) => {
    const orders = [];
    for (let i = v; i < count; i += vendors.length) {
      orders.push({ store, orderId: `queued-${i}`, customer: `Customer ${padding}`, address: `Street ${padding}` });
    }
    return placeAll(vendor, orders);
  }));
  for (;;) {
    const status = await (await fetch(`${url}/api/status`)).json();
    if (status.queues.some((queue) => queue.store === store && queue.queued >= count)) break;
    await sleep(200);
  }
  [...vendors, ...drivers].forEach((socket) => socket.close());
}

/** The honest shop: `RATE` orders a second for `seconds`; latency from placing to the delivered notice. */
async function honestSpell(vendor, label, seconds) {
  const placedAt = new Map();
  const latencies = [];
  const onDelivered = (notice) => {
    const at = placedAt.get(notice.orderId);
    if (at === undefined) return;
    placedAt.delete(notice.orderId);
    latencies.push(performance.now() - at);
    vendor.emit('received', { queueId: 'honest', event: 'delivered', messageId: notice.messageId });
  };
  vendor.on('delivered', onDelivered);
  const total = seconds * RATE;
  const started = performance.now();
  let refused = 0;
  for (let n = 0; n < total; n += 1) {
    const due = started + (n * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const order = { store: 'honest', orderId: `${label}-${n}`, customer: 'Jamal Braun', address: 'Schmittfurt, LA' };
    placedAt.set(order.orderId, performance.now());
    emit(vendor, 'pickup', order).then((answer) => { if (!answer.ok) refused += 1; }, () => { refused += 1; });
  }
  const deadline = performance.now() + 30_000;
  while (placedAt.size > 0 && performance.now() < deadline) await sleep(100);
  vendor.off('delivered', onDelivered);
  latencies.sort((a, b) => a - b);
  const pick = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return { spell: label, orders: total, delivered: latencies.length, lost: placedAt.size, refused,
    p50Ms: +pick(0.5).toFixed(2), p99Ms: +pick(0.99).toFixed(2), maxMs: +latencies.at(-1).toFixed(2) };
}

/** A raw Socket.IO client over WebSocket that stops reading once connected. */
async function silent(url, auth) {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  ws.on('error', () => {});
  await new Promise((resolve, reject) => {
    ws.on('close', () => reject(new Error('closed before joining')));
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('0')) ws.send(`40/caps,${JSON.stringify(auth)}`);
      if (text.startsWith('40/caps,')) resolve();
    });
  });
  ws.removeAllListeners('message');
  ws.removeAllListeners('close');
  ws._socket.pause();
  // ws resumes its socket whenever its parser drains: keep it stopped, so
  // that nothing more is read from the hub.
  ws._socket.resume = () => ws._socket;
  let id = 0;
  return {
    ws,
    send(event, payload) {
      if (ws.readyState !== WebSocket.OPEN) return;
      id += 1;
      ws.send(`42/caps,${id}${JSON.stringify([event, payload])}`);
    },
  };
}

/** Every kind of flood, at the default limits, until `stop` is set. */
async function flood(url, stop) {
  const counts = { getAll: 0, pickup: 0, received: 0, pings: 0, http: 0, http429: 0, reconnects: 0 };
  const kinds = [
    ['getAll', () => ['getAll', { queueId: 'acme' }]],
    ['pickup', () => ['pickup', { store: 'acme', orderId: 'queued-0', customer: 'Customer', address: 'Street' }]],
    ['received', () => ['received', { queueId: 'acme', messageId: `nope-${Math.random()}` }]],
  ];
  const loops = [];
  for (const [kind, payload] of kinds.filter(([kind]) => KINDS.has(kind))) {
    for (let n = 0; n < 2; n += 1) {
      loops.push((async () => {
        while (!stop.now) {
          let client;
          try {
            client = await silent(url, { role: 'vendor', store: 'acme' });
          } catch {
            counts.reconnects += 1;
            await sleep(100);
            continue;
          }
          // 150 a second, under the default rate limit of 200 (bursts 400).
          while (!stop.now && client.ws.readyState === WebSocket.OPEN) {
            for (let i = 0; i < 15; i += 1) client.send(...payload());
            counts[kind] += 15;
            await sleep(100);
          }
          client.ws.terminate();
          if (!stop.now) counts.reconnects += 1;
        }
      })());
    }
  }
  // Engine.io pings as fast as the socket takes them, never reading the pongs.
  if (KINDS.has('pings')) loops.push((async () => {
    const client = await silent(url, { role: 'viewer' });
    while (!stop.now && client.ws.readyState === WebSocket.OPEN) {
      for (let i = 0; i < 100; i += 1) client.ws.send('2');
      counts.pings += 100;
      await sleep(10);
    }
    client.ws.terminate();
  })());
  // HTTP reads: the board and a long page of orders, two callers.
  for (let n = 0; n < (KINDS.has('http') ? 2 : 0); n += 1) {
    loops.push((async () => {
      while (!stop.now) {
        const path = n ? '/api/orders?limit=500' : '/api/status';
        const response = await fetch(`${url}${path}`).catch(() => null);
        if (response) {
          await response.arrayBuffer();
          counts.http += 1;
          if (response.status === 429) counts.http429 += 1;
        }
      }
    })());
  }
  return { done: Promise.all(loops), counts };
}

async function pendingEvents(url) {
  const text = await (await fetch(`${url}/metrics`)).text().catch(() => '');
  const found = text.match(/^caps_pending_events (\S+)$/m);
  return found ? Number(found[1]) : null;
}

if (options.flood) {
  const stop = { now: false };
  setTimeout(() => { stop.now = true; }, SECONDS * 1000);
  const flooding = await flood(options.flood, stop);
  await flooding.done;
  console.log(JSON.stringify(flooding.counts));
  process.exit(0);
}

/** The flood, in a process of its own for `seconds`; resolves with its counts. */
function floodProcess(url, seconds) {
  const child = spawn(process.execPath, [new URL(import.meta.url).pathname, '--flood', url, '--seconds', String(seconds), '--kinds', options.kinds], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (chunk) => { out += chunk; });
  return new Promise((resolve) => child.once('exit', () => resolve(JSON.parse(out || '{}'))));
}

const hub = startHub();
const url = await hub.url;
say({ phase: 'start', url, seconds: SECONDS, queued: QUEUED, rate: RATE, idleRssMiB: +rssMiB(hub.child.pid).toFixed(1) });
const honestDrivers = await couriers(url, 'honest', 4);
await fillQueue(url, 'acme', QUEUED);
say({ phase: 'filled', rssMiB: +rssMiB(hub.child.pid).toFixed(1) });

// Both shops connect before the flood: every client here shares one
// address, and the HTTP flood spends the door's per-address rate of session
// openings (a real attacker's address is its own).
const [quietShop, abusedShop] = await Promise.all([1, 2].map(() => connect(url, { role: 'vendor', store: 'honest' })));
await honestSpell(quietShop, 'warmup', 5); // settles the fill's aftermath; not reported
const quiet = await honestSpell(quietShop, 'quiet', SECONDS);
say({ phase: 'quiet', ...quiet, rssMiB: +rssMiB(hub.child.pid).toFixed(1) });

let peakRss = 0;
let peakPending = 0;
const sampler = setInterval(async () => {
  peakRss = Math.max(peakRss, rssMiB(hub.child.pid));
  const pending = await pendingEvents(url);
  if (pending !== null) peakPending = Math.max(peakPending, pending);
}, 250);
const flooding = floodProcess(url, SECONDS + 2);
await sleep(1_000);
const abused = await honestSpell(abusedShop, 'abused', SECONDS);
const floods = await flooding;
clearInterval(sampler);
say({ phase: 'abused', ...abused, floods, peakRssMiB: +peakRss.toFixed(1), peakPendingEvents: peakPending });

let settledMs = null;
const settling = performance.now();
while (performance.now() - settling < 30_000) {
  if ((await pendingEvents(url)) === 0) { settledMs = Math.round(performance.now() - settling); break; }
  await sleep(100);
}
[...honestDrivers, quietShop, abusedShop].forEach((socket) => socket.close());
const stopping = performance.now();
hub.child.kill('SIGTERM');
const code = await Promise.race([hub.exited, sleep(30_000).then(() => 'still running')]);
const exitMs = Math.round(performance.now() - stopping);
if (code === 'still running') hub.child.kill('SIGKILL');
const summary = {
  phase: 'done',
  p50Ratio: +(abused.p50Ms / quiet.p50Ms).toFixed(2),
  p99Ratio: +(abused.p99Ms / quiet.p99Ms).toFixed(2),
  peakRssMiB: +peakRss.toFixed(1),
  peakPendingEvents: peakPending,
  pendingSettledMs: settledMs,
  sigtermExitMs: exitMs,
  exitCode: code,
  lost: quiet.lost + abused.lost,
};
say(summary);
process.exit(summary.lost === 0 ? 0 : 1);
