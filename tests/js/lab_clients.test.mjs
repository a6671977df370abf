// The course's own JavaScript clients against `caps hub`, unmodified, over
// every transport the official client offers; and mixed with our Rust roles.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Proc, capsBin, labScript, startHub } from './support.mjs';

const ORDER_READY = /^VENDOR: order (\S+) ready for pickup$/;
const THANKS = /^VENDOR: Thank you for delivering (\S+)$/;

function labVendor(url, env = {}) {
  return new Proc('node', [labScript('vendor.mjs')], {
    CAPS_URL: `${url}/caps`, STORE: '1-206-flowers', INTERVAL_MS: '100', COUNT: '3', ...env,
  });
}

function labDriver(url, env = {}) {
  return new Proc('node', [labScript('driver.mjs')], {
    CAPS_URL: `${url}/caps`, PICKUP_MS: '50', DELIVER_MS: '50', ...env,
  });
}

/** Every order the vendor placed was thanked for exactly once. */
function assertEveryOrderThankedOnce(vendor, count) {
  const placed = vendor.matching(ORDER_READY).map((line) => line.match(ORDER_READY)[1]);
  const thanked = vendor.matching(THANKS).map((line) => line.match(THANKS)[1]);
  assert.equal(placed.length, count);
  assert.deepEqual([...thanked].sort(), [...placed].sort());
}

for (const [label, transports, expectUpgrade] of [
  ['websocket only', 'websocket', false],
  ['long-polling with upgrade', 'polling,websocket', true],
  ['long-polling only', 'polling', false],
]) {
  test(`the course's vendor and driver complete the flow over ${label}`, async (t) => {
    const { hub, url } = await startHub();
    t.after(() => hub.kill());
    const driver = labDriver(url, { TRANSPORTS: transports });
    t.after(() => driver.kill());
    await driver.waitForLine(/^DRIVER: connected$/);
    const firstTransport = transports.split(',')[0];
    await driver.waitForLine(new RegExp(`^DRIVER: opened over ${firstTransport}$`));
    if (expectUpgrade) await driver.waitForLine(/^DRIVER: upgraded to websocket$/);

    const vendor = labVendor(url, { TRANSPORTS: transports });
    t.after(() => vendor.kill());
    const { code } = await vendor.exited;
    assert.equal(code, 0, vendor.stderr);
    assertEveryOrderThankedOnce(vendor, 3);

    for (const event of ['pickup', 'in-transit', 'delivered']) {
      await hub.waitForCount(new RegExp(`^EVENT \\{"event":"${event}"`), 3);
    }
    const record = JSON.parse(hub.matching(/^EVENT \{"event":"delivered"/)[0].slice('EVENT '.length));
    assert.match(record.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual(Object.keys(record.payload), ['store', 'orderId', 'customer', 'address']);
    assert.equal(record.payload.store, '1-206-flowers');
  });
}

test('a caps vendor is served by a lab driver, and a lab vendor by a caps driver', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());

  const jsDriver = labDriver(url);
  t.after(() => jsDriver.kill());
  await jsDriver.waitForLine(/^DRIVER: connected$/);
  const rustVendor = new Proc(capsBin, ['vendor', '--hub', url, '--store', 'acme', '--interval', '100ms', '--count', '3']);
  t.after(() => rustVendor.kill());
  assert.equal((await rustVendor.exited).code, 0, rustVendor.stderr);
  assertEveryOrderThankedOnce(rustVendor, 3);
  await jsDriver.kill();

  const rustDriver = new Proc(capsBin, ['driver', '--hub', url, '--pickup-delay', '50ms', '--deliver-delay', '50ms']);
  t.after(() => rustDriver.kill());
  await hub.waitForLog(/connected sid=\S+ driver name=/);
  const jsVendor = labVendor(url, { STORE: 'acme-widgets' });
  t.after(() => jsVendor.kill());
  assert.equal((await jsVendor.exited).code, 0, jsVendor.stderr);
  assertEveryOrderThankedOnce(jsVendor, 3);
  await rustDriver.waitForCount(/^DRIVER: delivered /, 3);
});
