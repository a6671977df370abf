// The dashboard in a real browser: headless Chromium (Debian's) driven by
// playwright-core. It watches an order placed by a `caps vendor` process move
// to delivered live while a `caps driver` works, places an order through its
// form and sees it delivered, and saves the screenshot the README shows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Proc, capsBin, startHub } from './support.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

test('the dashboard shows orders move live and places orders through its form', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const driver = new Proc(capsBin, ['driver', '--hub', url, '--name', 'alice', '--pickup-delay', '400ms', '--deliver-delay', '800ms']);
  t.after(() => driver.kill());
  await hub.waitForLog(/driver name=alice/);

  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(error.message));
  await page.goto(url);
  await page.waitForSelector('#connection[data-state="live"]', { timeout: 10_000 });

  // An order from a `caps vendor` process moves through every state, live.
  const vendor = new Proc(capsBin, ['vendor', '--hub', url, '--store', 'acme-widgets', '--count', '1']);
  t.after(() => vendor.kill());
  const ready = await vendor.waitForLine(/^VENDOR: order \S+ ready for pickup$/);
  const orderId = ready.split(' ')[2];
  await page.waitForSelector(`#list-in-transit li:has-text("${orderId}")`, { timeout: 10_000 });
  await page.waitForSelector(`#list-delivered li:has-text("${orderId}")`, { timeout: 10_000 });
  const feed = await page.locator('#feed li').allTextContents();
  for (const state of ['ready', 'assigned', 'in-transit', 'delivered']) {
    assert.ok(feed.some((line) => line.startsWith(`${state} · ${orderId}`)), `the feed showed ${state}: ${feed}`);
  }
  assert.equal((await vendor.exited).code, 0);

  // A shop places an order through the form and sees it delivered.
  await page.fill('#order-store', '1-206-flowers');
  await page.fill('#order-customer', 'Jamal Braun');
  await page.fill('#order-address', 'Schmittfurt, LA');
  await page.click('#order-form button');
  const mine = page.locator('#my-orders li').first();
  await mine.waitFor();
  const myId = await mine.getAttribute('data-order-id');
  // The picture for the README: an order on its way. Written to docs/ only
  // when asked (CAPS_SCREENSHOTS=1), so that a test run leaves the work
  // tree as it found it.
  await page.waitForSelector(`#list-in-transit li:has-text("${myId}")`, { timeout: 10_000 });
  const shots = process.env.CAPS_SCREENSHOTS === '1' ? path.join(root, 'docs') : tmpdir();
  await page.screenshot({ path: path.join(shots, 'dashboard.png') });
  await page.waitForSelector('#my-orders li .state.delivered', { timeout: 10_000 });
  assert.match(await mine.textContent(), /delivered .*1-206-flowers · Jamal Braun, Schmittfurt, LA/);

  // Drivers, stores, counts.
  assert.match(await page.textContent('#drivers'), /alice/);
  await page.waitForFunction(() => document.querySelector('#count-delivered').textContent === '2');

  // The filter shows one store only.
  await page.selectOption('#store-filter', 'acme-widgets');
  const shown = await page.locator('#feed li:visible').allTextContents();
  assert.ok(shown.length > 0 && shown.every((line) => line.includes('acme-widgets')), shown.join('\n'));
  await page.selectOption('#store-filter', '');

  assert.deepEqual(problems, []);

  // Readable on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
});

test('the dashboard serves the pinned official socket.io client', async (t) => {
  const { hub, url } = await startHub();
  t.after(() => hub.kill());
  const served = await (await fetch(`${url}/socket.io.min.js`)).text();
  const { readFileSync } = await import('node:fs');
  const pinned = readFileSync(path.join(root, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js'), 'utf8');
  assert.equal(served, pinned);
  assert.match(served, /Socket\.IO v4\.8\.4/);
});
