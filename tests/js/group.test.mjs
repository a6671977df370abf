// Browsers through HAProxy in front of three hubs on one PostgreSQL: the
// configuration in deploy/haproxy.cfg (shown in the README), the dashboard
// in headless Chromium with Socket.IO's default transports (long-polling,
// then the upgrade to a WebSocket), and our vendor and driver through the
// same door. Every page, whichever hub it is on, sees the whole group live,
// and no request is refused "Session ID unknown".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Proc, capsBin, connectClient } from './support.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function accepting(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true); });
    socket.on('error', () => resolve(false));
  });
}

async function waitUntil(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Where PostgreSQL's programs are; null where it is not installed. */
function postgresBin() {
  if (process.env.CAPS_PG_BIN) return process.env.CAPS_PG_BIN;
  try {
    const newest = readdirSync('/usr/lib/postgresql').sort().pop();
    return newest ? path.join('/usr/lib/postgresql', newest, 'bin') : null;
  } catch {
    return null;
  }
}

const PG_BIN = postgresBin();
if (!PG_BIN && process.env.CAPS_REQUIRE_POSTGRES) {
  throw new Error('CAPS_REQUIRE_POSTGRES is set, but PostgreSQL is not installed (scripts/setup.sh installs it)');
}
/** The options of a test that needs PostgreSQL: skipped, saying why, without it. */
const NEEDS_POSTGRES = PG_BIN ? {} : { skip: 'needs PostgreSQL, which is not installed (scripts/setup.sh installs it)' };

/** A private PostgreSQL cluster (as the postgres user when we are root). */
async function startPostgres() {
  const bin = PG_BIN;
  const dir = mkdtempSync(path.join(tmpdir(), 'caps-pg-'));
  chmodSync(dir, 0o700);
  const root = process.getuid() === 0;
  if (root) chownSync(dir, Number(execFileSync('id', ['-u', 'postgres']).toString()), Number(execFileSync('id', ['-g', 'postgres']).toString()));
  const run = (program, args) => (root
    ? execFileSync('runuser', ['-u', 'postgres', '--', path.join(bin, program), ...args], { stdio: 'pipe' })
    : execFileSync(path.join(bin, program), args, { stdio: 'pipe' }));
  const port = await freePort();
  const data = path.join(dir, 'data');
  run('initdb', ['-D', data, '-A', 'trust', '-U', 'caps', '--no-sync']);
  run('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-o',
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
  execFileSync('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'caps', '-d', 'postgres', '-c', 'CREATE DATABASE caps'], { stdio: 'pipe' });
  return {
    url: `postgres://caps@127.0.0.1:${port}/caps`,
    stop() {
      try { run('pg_ctl', ['-D', data, 'stop', '-m', 'immediate']); } catch { /* already stopped */ }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function groupHub(database, id) {
  const hub = new Proc(capsBin, ['hub', '--port', '0', '--database', database, '--hub-id', id,
    '--hub-dead-after', '2s', '--take-after', '100ms'], { RUST_LOG: 'info' });
  const banner = await hub.waitForLine(/listening on http:\/\//);
  return { hub, address: banner.split(' ').pop().replace('http://', '') };
}

test('browsers and our clients through HAProxy see the whole group, no session is lost, and a dead hub\'s browsers come back', NEEDS_POSTGRES, async (t) => {
  const postgres = await startPostgres();
  t.after(() => postgres.stop());
  const hubs = [];
  for (const id of ['a', 'b', 'c']) {
    const started = await groupHub(postgres.url, id);
    t.after(() => started.hub.kill());
    hubs.push(started);
  }
  const lbPort = await freePort();
  const haproxy = new Proc('haproxy', ['-db', '-f', path.join(root, 'deploy', 'haproxy.cfg')], {
    CAPS_LB_BIND: `127.0.0.1:${lbPort}`,
    CAPS_HUB_A: hubs[0].address,
    CAPS_HUB_B: hubs[1].address,
    CAPS_HUB_C: hubs[2].address,
  });
  t.after(() => haproxy.kill());
  await waitUntil('HAProxy listening', () => accepting(lbPort));
  const lb = `http://127.0.0.1:${lbPort}`;

  // The balancer spreads new sessions over the hubs and names each in its cookie.
  const cookies = new Set();
  for (let n = 0; n < 3; n++) {
    const response = await fetch(`${lb}/socket.io/?EIO=4&transport=polling`);
    assert.equal(response.status, 200);
    cookies.add(/CAPS_HUB=(\w+)/.exec(response.headers.get('set-cookie') ?? '')?.[1]);
  }
  assert.deepEqual([...cookies].sort(), ['a', 'b', 'c']);

  // Three browsers, each its own cookie jar: round robin puts one on each hub.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.after(() => browser.close());
  const pages = [];
  const unknownSessions = [];
  const problems = [];
  for (let n = 0; n < 3; n++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const upgraded = { frames: 0 };
    page.on('websocket', (socket) => {
      if (socket.url().includes('/socket.io/')) socket.on('framereceived', () => { upgraded.frames += 1; });
    });
    page.on('pageerror', (error) => problems.push(error.message));
    page.on('response', (response) => {
      if (response.url().includes('/socket.io/') && response.status() === 400) unknownSessions.push(response.url());
    });
    await page.goto(lb);
    await page.waitForSelector('#connection[data-state="live"]', { timeout: 10_000 });
    // Beside the dashboard (which opens a WebSocket at once), the official
    // client with its default transports: long-polling, then the upgrade.
    await page.evaluate(() => new Promise((resolve, reject) => {
      const probe = io('/caps', { auth: { role: 'viewer' } });
      window.probe = probe;
      window.heard = [];
      probe.on('activity', (activity) => window.heard.push(`${activity.state} ${activity.orderId}`));
      probe.once('connect', () => resolve(probe.io.engine.transport.name));
      probe.once('connect_error', (error) => reject(new Error(error.message)));
    }));
    await page.waitForFunction(() => window.probe.io.engine.transport.name === 'websocket', null, { timeout: 10_000 });
    pages.push({ context, page, upgraded });
  }
  const onHubs = new Set();
  for (const { context } of pages) {
    const cookie = (await context.cookies()).find((c) => c.name === 'CAPS_HUB');
    onHubs.add(cookie?.value);
  }
  assert.equal(onHubs.size, 3, `the browsers are on hubs ${[...onHubs]}`);

  // A courier and a shop through the balancer (WebSocket at once).
  const driver = new Proc(capsBin, ['driver', '--hub', lb, '--name', 'dana', '--pickup-delay', '300ms', '--deliver-delay', '300ms']);
  t.after(() => driver.kill());
  const vendor = new Proc(capsBin, ['vendor', '--hub', lb, '--store', 'acme', '--count', '5', '--interval', '200ms']);
  t.after(() => vendor.kill());
  assert.equal((await vendor.exited).code, 0, vendor.describe());
  const placed = vendor.matching(/^VENDOR: order \S+ ready for pickup$/).map((line) => line.split(' ')[2]);
  assert.equal(placed.length, 5);

  // Every page saw every order delivered, live, whichever hub served it.
  for (const { page } of pages) {
    for (const id of placed) {
      await page.waitForSelector(`#list-delivered li:has-text("${id}")`, { timeout: 10_000 });
    }
    const feed = await page.locator('#feed li').allTextContents();
    for (const id of placed) {
      assert.ok(feed.some((line) => line.startsWith(`delivered · ${id}`)), `the feed showed ${id} delivered: ${feed}`);
    }
    assert.match(await page.textContent('#drivers'), /dana/);
    const heard = await page.evaluate(() => window.heard);
    for (const id of placed) assert.ok(heard.includes(`delivered ${id}`), `the probe heard ${id} delivered: ${heard}`);
    assert.equal(await page.evaluate(() => window.probe.io.engine.transport.name), 'websocket');
  }
  // The sessions started on long-polling and moved to a WebSocket, and none was refused.
  for (const { upgraded } of pages) assert.ok(upgraded.frames > 0, 'a page never got its WebSocket');
  assert.deepEqual(unknownSessions, []);

  // Hub b dies: the browser on it comes back through the balancer, on
  // another hub, and sees the next orders delivered.
  let onB;
  for (const entry of pages) {
    const cookie = (await entry.context.cookies()).find((c) => c.name === 'CAPS_HUB');
    if (cookie?.value === 'b') onB = entry.page;
  }
  // The probe (default transports) must drop and connect again.
  await onB.evaluate(() => {
    window.back = new Promise((resolve) => {
      window.probe.once('disconnect', () => window.probe.once('connect', () => resolve(window.probe.io.engine.transport.name)));
    });
  });
  await hubs[1].hub.kill('SIGKILL');
  await onB.evaluate(() => Promise.race([
    window.back,
    new Promise((_, reject) => setTimeout(() => reject(new Error('the probe did not come back')), 15_000)),
  ]));
  await onB.waitForSelector('#connection[data-state="live"]', { timeout: 15_000 });
  const later = new Proc(capsBin, ['vendor', '--hub', lb, '--store', 'bolt', '--count', '3', '--interval', '200ms']);
  t.after(() => later.kill());
  assert.equal((await later.exited).code, 0, later.describe());
  for (const line of later.matching(/^VENDOR: order \S+ ready for pickup$/)) {
    await onB.waitForSelector(`#list-delivered li:has-text("${line.split(' ')[2]}")`, { timeout: 10_000 });
  }
  assert.deepEqual(problems, []);
});

test('a viewer on one hub hears of an order placed on another that has no viewer of its own', NEEDS_POSTGRES, async (t) => {
  const postgres = await startPostgres();
  t.after(() => postgres.stop());
  const [a, b] = [await groupHub(postgres.url, 'a'), await groupHub(postgres.url, 'b')];
  t.after(() => a.hub.kill());
  t.after(() => b.hub.kill());
  const viewer = await connectClient(`http://${b.address}`, { auth: { role: 'viewer' } });
  t.after(() => viewer.close());
  const orderId = `far-${Math.random().toString(36).slice(2)}`;
  const heard = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`hub b's viewer heard nothing of ${orderId}`)), 15_000);
    viewer.on('activity', (activity) => {
      if (activity.orderId !== orderId) return;
      clearTimeout(timer);
      resolve(activity);
    });
  });
  const response = await fetch(`http://${a.address}/api/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ store: 'acme', orderId, customer: 'Jamal Braun', address: 'Schmittfurt, LA' }),
  });
  assert.ok(response.ok, `placing the order on hub a: ${response.status} ${await response.text()}`);
  const activity = await heard;
  assert.equal(activity.store, 'acme');
  assert.equal(activity.state, 'ready');
});
