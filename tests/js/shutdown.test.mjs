// A clean stop drains: on SIGTERM the hub answers every event it took (its
// changes committed first), then disconnects its clients and exits 0; every
// order it acknowledged is in the data dir when it comes back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Proc, capsBin, connectClient } from './support.mjs';

async function hubOn(dataDir) {
  const hub = new Proc(capsBin, ['hub', '--port', '0', '--data-dir', dataDir], { RUST_LOG: 'info' });
  const banner = await hub.waitForLine(/listening on http:\/\//);
  return { hub, url: banner.split(' ').pop() };
}

test('SIGTERM answers every event taken, exits 0, and loses nothing acknowledged', async (t) => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'caps-drain-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const { hub, url } = await hubOn(dataDir);
  t.after(() => hub.kill('SIGKILL'));
  const shop = await connectClient(url, { auth: { role: 'vendor', store: 'drain' } });
  t.after(() => shop.close());

  const orders = Array.from({ length: 400 }, (_, i) => ({
    store: 'drain', orderId: `d-${i}`, customer: 'Jamal Braun', address: 'Schmittfurt, LA',
  }));
  // Emit them all, and stop the hub once it has answered the first.
  const answers = orders.map((order) => shop.timeout(10_000).emitWithAck('pickup', order)
    .then((ack) => ({ order, ack }), (error) => ({ order, error: error.message })));
  await answers[0];
  hub.kill('SIGTERM');
  const settled = await Promise.all(answers);
  const { code } = await hub.exited;
  assert.equal(code, 0, hub.describe());

  // Every pickup the hub took (its event log has a line for each) was
  // answered: accepted, or refused busy once it was stopping.
  const taken = new Set(hub.matching(/"event":"pickup"/).map((line) => JSON.parse(line.slice(6)).payload.orderId));
  const answered = new Map(settled.filter((s) => s.ack).map((s) => [s.order.orderId, s.ack]));
  const unanswered = [...taken].filter((id) => !answered.has(id));
  assert.deepEqual(unanswered, [], 'pickups taken but never answered');
  const accepted = [...answered].filter(([, ack]) => ack.ok).map(([id]) => id);
  for (const [, ack] of answered) if (!ack.ok) assert.equal(ack.error.code, 'busy', JSON.stringify(ack));
  assert.ok(accepted.length > 0 && taken.size > 0, 'some orders were taken before the stop');

  const again = await hubOn(dataDir);
  t.after(() => again.hub.kill('SIGKILL'));
  const page = await (await fetch(`${again.url}/api/orders?store=drain&limit=500`)).json();
  const recorded = new Set(page.orders.map((o) => o.orderId));
  const missing = accepted.filter((id) => !recorded.has(id));
  assert.deepEqual(missing, [], 'every acknowledged order is in the data dir');
});
