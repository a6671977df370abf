// Shared helpers for the JavaScript tests: run the built `caps` binary and the
// lab's scripts as child processes and wait on what they print, with timeouts.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The `caps` binary under test: $CAPS_BIN, or the debug build. */
export const capsBin = process.env.CAPS_BIN ?? path.join(root, 'target', 'debug', 'caps');

/** The path of a lab script under tests/js/lab. */
export const labScript = (name) => path.join(root, 'tests', 'js', 'lab', name);

/** The lines of one output stream, kept so they can be searched and waited on. */
class Lines {
  constructor(stream) {
    this.all = [];
    this.waiters = [];
    createInterface({ input: stream }).on('line', (line) => {
      this.all.push(line);
      this.waiters = this.waiters.filter((waiter) => !waiter());
    });
  }

  matching(pattern) {
    return this.all.filter((line) => pattern.test(line));
  }

  /** Resolves once `count` lines match `pattern`, with the first of them. */
  waitFor(pattern, count, timeoutMs, describe) {
    const ready = () => this.matching(pattern).length >= count;
    if (ready()) return Promise.resolve(this.matching(pattern)[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${this.matching(pattern).length} of ${count} lines matching ${pattern} within ${timeoutMs} ms\n${describe()}`));
      }, timeoutMs);
      this.waiters.push(() => {
        if (!ready()) return false;
        clearTimeout(timer);
        resolve(this.matching(pattern)[0]);
        return true;
      });
    });
  }
}

/** A child process whose stdout and stderr lines can be waited on. */
export class Proc {
  constructor(command, args, env = {}) {
    this.child = spawn(command, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.out = new Lines(this.child.stdout);
    this.err = new Lines(this.child.stderr);
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({ code, signal }));
  }

  get stderr() {
    return this.err.all.join('\n');
  }

  describe() {
    return `stdout:\n${this.out.all.join('\n')}\nstderr:\n${this.stderr}`;
  }

  /** Resolves with the first stdout line matching `pattern`. */
  waitForLine(pattern, timeoutMs = 30_000) {
    return this.out.waitFor(pattern, 1, timeoutMs, () => this.describe());
  }

  /** Resolves once `count` stdout lines match `pattern`. */
  waitForCount(pattern, count, timeoutMs = 30_000) {
    return this.out.waitFor(pattern, count, timeoutMs, () => this.describe());
  }

  /** Resolves with the first stderr line matching `pattern`. */
  waitForLog(pattern, timeoutMs = 30_000) {
    return this.err.waitFor(pattern, 1, timeoutMs, () => this.describe());
  }

  /** Stdout lines matching `pattern`. */
  matching(pattern) {
    return this.out.matching(pattern);
  }

  kill(signal = 'SIGTERM') {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/**
 * Starts `caps hub --port 0` on a fresh temporary data dir (removed when the
 * hub is killed) and resolves with it and its URL.
 */
export async function startHub(extraArgs = []) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'caps-hub-'));
  const hub = new Proc(capsBin, ['hub', '--port', '0', '--data-dir', dataDir, ...extraArgs], { RUST_LOG: 'info' });
  hub.exited.then(() => rmSync(dataDir, { recursive: true, force: true }));
  const banner = await hub.waitForLine(/listening on http:\/\//);
  return { hub, url: banner.split(' ').pop() };
}

/** The order fields of a payload (a `delivered` notice also carries its envelope). */
export function orderOf(payload) {
  const { store, orderId, customer, address } = payload;
  return { store, orderId, customer, address };
}

/** A connected official socket.io client on the hub's /caps namespace. */
export async function connectClient(url, options = {}) {
  const socket = io(`${url}/caps`, { transports: ['websocket'], reconnection: false, ...options });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  return socket;
}

/**
 * An honest vendor and driver, connected with these `auth` objects, place
 * and deliver one order of `store`: every step acknowledged `{ ok: true }`,
 * the offer and the notice carrying the order, the notice acknowledged.
 */
export async function honestDelivery(url, { vendorAuth, driverAuth, store = 'acme' }) {
  const vendor = await connectClient(url, { auth: vendorAuth });
  const driver = await connectClient(url, { auth: driverAuth });
  try {
    const placed = {
      store,
      orderId: `order-${Math.random().toString(36).slice(2)}`,
      customer: 'Jamal Braun',
      address: 'Schmittfurt, LA',
    };
    const offered = nextEvent(driver, 'pickup');
    assert.deepEqual(await emitWithAck(vendor, 'pickup', placed), { ok: true });
    assert.deepEqual(await offered, placed);
    const told = nextEvent(vendor, 'delivered');
    assert.deepEqual(await emitWithAck(driver, 'in-transit', placed), { ok: true });
    assert.deepEqual(await emitWithAck(driver, 'delivered', placed), { ok: true });
    const notice = await told;
    assert.deepEqual(orderOf(notice), placed);
    assert.deepEqual(
      await emitWithAck(vendor, 'received', { queueId: store, event: 'delivered', messageId: notice.messageId }),
      { ok: true },
    );
  } finally {
    vendor.close();
    driver.close();
  }
}

/** Emits with an acknowledgement and resolves with the reply, or rejects on timeout. */
export function emitWithAck(socket, event, ...args) {
  return socket.timeout(20_000).emitWithAck(event, ...args);
}

/** Resolves with the next `event` payload on `socket`, or rejects after `timeoutMs`. */
export function nextEvent(socket, event, timeoutMs = 20_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (payload) => {
      clearTimeout(timer);
      resolve(payload);
    });
  });
}

/** Resolves true if `event` arrives on `socket` within `ms`, false otherwise. */
export function arrives(socket, event, ms = 300) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      socket.off(event, onEvent);
      resolve(false);
    }, ms);
    function onEvent() {
      clearTimeout(timer);
      resolve(true);
    }
    socket.once(event, onEvent);
  });
}
