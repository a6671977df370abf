// The HTTP API with a real HTTP client (fetch): placing and tracking orders,
// paging, errors as JSON with the Socket.IO codes, metrics; and, with a
// secret, who may read and write what.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Proc, capsBin, startHub } from './support.mjs';

async function call(url, pathname, { method = 'GET', body, token, raw } = {}) {
  const headers = {};
  if (body !== undefined || raw !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${url}${pathname}`, { method, headers, body: raw ?? (body === undefined ? undefined : JSON.stringify(body)) });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, json, text };
}

async function until(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('orders are placed, tracked and paged over HTTP; bad input gets a 4xx with a reason', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());

  const placed = await call(url, '/api/orders', { method: 'POST', body: { store: 'acme', customer: 'Jamal Braun', address: 'Schmittfurt, LA' } });
  assert.equal(placed.status, 201);
  assert.match(placed.json.orderId, /^[0-9a-f-]{36}$/);
  const { orderId } = placed.json;

  const driver = new Proc(capsBin, ['driver', '--hub', url, '--name', 'alice', '--pickup-delay', '5ms', '--deliver-delay', '5ms']);
  t.after(() => driver.kill());
  const tracked = await until(async () => {
    const reply = await call(url, `/api/orders/${orderId}`);
    return reply.json.state === 'delivered' && reply;
  }, 'delivery');
  assert.equal(tracked.status, 200);
  assert.deepEqual(tracked.json.history.map((step) => step.state), ['ready', 'assigned', 'in-transit', 'delivered']);
  assert.equal(tracked.json.history[3].driver, 'alice');
  for (const step of tracked.json.history) assert.ok(!Number.isNaN(Date.parse(step.at)));
  const metrics = (await call(url, '/metrics')).text;
  assert.match(metrics, /caps_connections\{role="driver"\} 1/);
  assert.match(metrics, /caps_orders\{state="delivered"\} 1/);
  assert.match(metrics, /caps_orders\{state="ready"\} 0/);
  assert.match(metrics, /caps_events_total\{event="in-transit"\} 1/);
  assert.match(metrics, /caps_delivery_seconds_count 1/);
  await driver.kill();

  // Idempotent with an explicit orderId; a conflicting payload is refused.
  const again = { store: 'acme', orderId, customer: 'Jamal Braun', address: 'Schmittfurt, LA' };
  assert.equal((await call(url, '/api/orders', { method: 'POST', body: again })).status, 201);
  const conflict = await call(url, '/api/orders', { method: 'POST', body: { ...again, customer: 'Someone Else' } });
  assert.equal(conflict.status, 409);
  assert.equal(conflict.json.error.code, 'order_conflict');

  // Paging and filters.
  for (let i = 0; i < 5; i += 1) {
    await call(url, '/api/orders', { method: 'POST', body: { store: 'globex', orderId: `g-${i}`, customer: 'C', address: 'A, ZZ' } });
  }
  const first = await call(url, '/api/orders?store=globex&limit=2');
  assert.deepEqual(first.json.orders.map((o) => o.orderId), ['g-0', 'g-1']);
  const second = await call(url, `/api/orders?store=globex&limit=2&after=${first.json.next}`);
  assert.deepEqual(second.json.orders.map((o) => o.orderId), ['g-2', 'g-3']);
  const delivered = await call(url, '/api/orders?state=delivered');
  assert.deepEqual(delivered.json.orders.map((o) => o.orderId), [orderId]);

  // Errors: JSON, 4xx, never a 500.
  const errors = [
    [{ method: 'POST', body: { store: 'acme', customer: 'x' } }, '/api/orders', 400, 'invalid_payload'],
    [{ method: 'POST', body: { store: '', customer: 'x', address: 'y' } }, '/api/orders', 400, 'invalid_payload'],
    [{ method: 'POST', raw: 'not json' }, '/api/orders', 400, 'invalid_payload'],
    [{ method: 'POST', raw: JSON.stringify({ store: 'acme', customer: 'x'.repeat(20_000), address: 'y' }) }, '/api/orders', 413, 'payload_too_large'],
    [{}, '/api/orders/no-such-order', 404, 'unknown_order'],
    [{}, '/api/orders?state=lost', 400, 'invalid_payload'],
    [{}, '/api/orders?limit=lots', 400, 'invalid_payload'],
    [{}, '/api/nothing-here', 404, 'invalid_payload'],
  ];
  for (const [options, pathname, status, code] of errors) {
    const reply = await call(url, pathname, options);
    assert.equal(reply.status, status, `${pathname} ${JSON.stringify(options).slice(0, 80)}: ${reply.text}`);
    assert.equal(reply.json.ok, false);
    assert.equal(reply.json.error.code, code);
    assert.ok(reply.json.error.message.length > 0);
  }

  assert.equal((await call(url, '/healthz')).text, 'ok\n');
  const after = (await call(url, '/metrics')).text;
  assert.match(after, /caps_refusals_total\{code="order_conflict"\} 1/);
  assert.match(after, /caps_orders\{state="ready"\} 5/);
});

test('with a secret, the API needs a token: vendors see and place only their own orders', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'caps-api-'));
  const secretFile = path.join(dir, 'secret');
  writeFileSync(secretFile, 'an-api-test-secret-that-is-long-enough-0123456789', { mode: 0o600 });
  const token = (...args) => execFileSync(capsBin, ['token', ...args, '--secret-file', secretFile]).toString().trim();
  const { hub, url } = await startHub(['--secret-file', secretFile]);
  t.after(() => hub.kill());
  const acme = token('vendor', '--store', 'acme');
  const viewer = token('viewer');
  const order = { store: 'acme', orderId: 'a-1', customer: 'C', address: 'A, ZZ' };

  assert.equal((await call(url, '/api/status')).status, 401);
  assert.equal((await call(url, '/api/orders', { method: 'POST', body: order })).status, 401);
  assert.equal((await call(url, '/api/orders', { method: 'POST', body: order, token: 'forged' })).json.error.code, 'unauthorized');
  assert.equal((await call(url, '/api/orders', { method: 'POST', body: order, token: acme })).status, 201);
  const theirs = await call(url, '/api/orders', { method: 'POST', body: { ...order, store: 'globex' }, token: acme });
  assert.equal(theirs.status, 403);
  assert.equal(theirs.json.error.code, 'forbidden');
  assert.equal((await call(url, '/api/orders', { method: 'POST', body: order, token: viewer })).status, 403);

  assert.equal((await call(url, '/api/orders/a-1', { token: acme })).json.state, 'ready');
  assert.equal((await call(url, '/api/orders?store=globex', { token: acme })).status, 403);
  assert.equal((await call(url, '/api/status', { token: acme })).status, 403);
  assert.equal((await call(url, '/api/status', { token: viewer })).status, 200);
  assert.equal((await call(url, '/api/orders/a-1', { token: viewer })).json.store, 'acme');
});
