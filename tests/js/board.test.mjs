// The board with more drivers than the hub republishes after every step
// (256): who is online is then published at a pace, and the board must
// still converge on the truth, on the way up and on the way down.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startHub } from './support.mjs';

const DRIVERS = 300;

/** Polls /api/status until `done(status)` holds; fails after 10 s with the last status. */
async function boardUntil(url, what, done) {
  const deadline = Date.now() + 10_000;
  let status;
  for (;;) {
    status = await (await fetch(`${url}/api/status`)).json();
    if (done(status)) return status;
    assert.ok(Date.now() < deadline, `${what}: ${JSON.stringify(status.drivers.length)} drivers listed`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test(`the board lists ${DRIVERS} drivers online, then none once they leave`, async (t) => {
  // Session openings per address lifted: one address stands for them all.
  const { hub, url } = await startHub(['--api-rate-limit', '100000']);
  t.after(() => hub.kill());
  const drivers = Array.from({ length: DRIVERS }, (_, i) => io(`${url}/caps`, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    auth: { role: 'driver', name: `board-${i}` },
  }));
  t.after(() => drivers.forEach((socket) => socket.close()));
  await Promise.all(drivers.map((socket) => new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  })));

  const full = await boardUntil(url, `all ${DRIVERS} online`, (status) =>
    status.drivers.filter((driver) => driver.online).length === DRIVERS);
  assert.deepEqual(
    full.drivers.map((driver) => driver.name).sort(),
    drivers.map((_, i) => `board-${i}`).sort(),
  );

  drivers.forEach((socket) => socket.close());
  await boardUntil(url, 'none left', (status) => status.drivers.length === 0);
});
