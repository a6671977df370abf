// The second load generator of `caps bench --generators node`: the same
// scenarios as caps bench's own Rust client (idle connections, closed loop,
// fixed rate), driven through the official socket.io-client, so that a
// figure that depends on the generator shows it.
//
// caps bench runs it once per measurement and measures the hub's CPU and
// memory itself; the two speak in lines. The generator prints JSON lines on
// stdout, and waits for a line on stdin where caps bench must read the hub:
//   {"phase":"idle","connectsPerSecond":…}  after --conns idle drivers (stdin: go on)
//   {"phase":"ready"}                        vendors and drivers connected (stdin: go)
//   {"phase":"done","sent":…,"delivered":…,"duplicates":…,"seconds":…,
//    "p50Ms":…,"p99Ms":…,"maxMs":…}
// Usage: node generator.mjs '{"url":…,"urls":[…],"vendors":…,"drivers":…,"orders":…,
//   "rate":null|n,"window":n,"acknowledge":bool,"conns":n,"patienceMs":n}'
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';

const config = JSON.parse(process.argv[2]);
// Client n connects to urls[n % urls.length]: the hubs of a group in turn.
const urls = config.urls ?? [config.url];
const stdin = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once('line', resolve));
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

function connect(auth, index = 0) {
  const namespace = `${urls[index % urls.length]}/caps`;
  return new Promise((resolve, reject) => {
    const socket = io(namespace, { transports: ['websocket'], reconnection: false, forceNew: true, auth });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (error) => reject(new Error(`connect: ${error.message}`)));
  });
}

/** Opens `count` idle drivers, 500 at a time, as caps bench does. */
async function idleDrivers(count) {
  const held = [];
  const started = performance.now();
  for (let first = 0; first < count; first += 500) {
    const batch = [];
    for (let index = first; index < Math.min(count, first + 500); index += 1) {
      batch.push(connect({ role: 'driver', name: `idle-${index}`, capacity: 1 }, index));
    }
    held.push(...(await Promise.all(batch)));
  }
  const seconds = (performance.now() - started) / 1000;
  return { held, connectsPerSecond: count / seconds };
}

async function main() {
  if (config.conns > 0) {
    const { held, connectsPerSecond } = await idleDrivers(config.conns);
    say({ phase: 'idle', connectsPerSecond });
    await nextLine();
    held.forEach((socket) => socket.close());
  }

  // Drivers take every offer at once.
  const drivers = await Promise.all(Array.from({ length: config.drivers }, (_, index) =>
    connect({ role: 'driver', name: `bench-driver-${index}`, capacity: 10_000 }, index)));
  for (const driver of drivers) {
    driver.on('pickup', (order) => {
      driver.emit('in-transit', order);
      driver.emit('delivered', order);
    });
  }

  const sentAt = new Map();
  const done = new Set();
  const latencies = [];
  let duplicates = 0;
  let lastDelivery = 0;
  const total = config.vendors * config.orders;
  const vendors = await Promise.all(Array.from({ length: config.vendors }, (_, index) =>
    connect({ role: 'vendor', store: `bench-store-${index}` }, index)));
  say({ phase: 'ready' });
  await nextLine();

  const started = performance.now();
  let allDone;
  const finished = new Promise((resolve) => { allDone = resolve; });
  const place = (vendor, store, n) => {
    const orderId = `${store}-${n}-${randomUUID()}`;
    sentAt.set(orderId, performance.now());
    vendor.emit('pickup', { store, orderId, customer: 'Bench Customer', address: 'Benchtown, BT' });
  };
  vendors.forEach((vendor, index) => {
    const store = `bench-store-${index}`;
    let next = 0;
    vendor.on('delivered', (notice) => {
      const now = performance.now();
      if (done.has(notice.orderId)) {
        duplicates += 1;
      } else {
        done.add(notice.orderId);
        const sent = sentAt.get(notice.orderId);
        if (sent !== undefined) latencies.push(now - sent);
        lastDelivery = now;
        // Closed loop: each delivery frees a place in the window.
        if (config.rate === null && next < config.orders) place(vendor, store, next++);
        if (done.size >= total) allDone();
      }
      if (notice.messageId && config.acknowledge !== false) vendor.emit('received', { queueId: store, event: 'delivered', messageId: notice.messageId });
    });
    if (config.rate === null) {
      while (next < Math.min(config.window, config.orders)) place(vendor, store, next++);
    } else {
      // Fixed rate: each vendor sends its share on a steady clock.
      const interval = 1000 / (config.rate / config.vendors);
      const begun = performance.now();
      const tick = () => {
        const due = Math.min(config.orders, Math.floor((performance.now() - begun) / interval) + 1);
        while (next < due) place(vendor, store, next++);
        if (next < config.orders) setTimeout(tick, Math.max(0, begun + next * interval - performance.now()));
      };
      tick();
    }
  });

  // Every delivery, or nothing new for the patience.
  let seen = -1;
  let quietSince = performance.now();
  await Promise.race([finished, new Promise((resolve) => {
    const check = setInterval(() => {
      if (done.size !== seen) {
        seen = done.size;
        quietSince = performance.now();
      } else if (performance.now() - quietSince > config.patienceMs) {
        clearInterval(check);
        resolve();
      }
    }, 50);
    finished.then(() => clearInterval(check));
  })]);

  latencies.sort((a, b) => a - b);
  const percentile = (p) => (latencies.length === 0 ? 0
    : latencies[Math.min(latencies.length, Math.max(1, Math.ceil(latencies.length * p))) - 1]);
  say({
    phase: 'done',
    sent: sentAt.size,
    delivered: done.size,
    duplicates,
    seconds: ((lastDelivery || performance.now()) - started) / 1000,
    p50Ms: percentile(0.5),
    p99Ms: percentile(0.99),
    maxMs: latencies.length ? latencies[latencies.length - 1] : 0,
  });
  [...vendors, ...drivers].forEach((socket) => socket.close());
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(`generator: ${error.stack ?? error}\n`);
  process.exit(1);
});
