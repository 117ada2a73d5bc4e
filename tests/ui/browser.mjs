// End-to-end test of mozpool's web page in real headless Chromium (Debian's package),
// driven with playwright-core over the DevTools protocol. No browser is downloaded.
//
//   node tests/ui/browser.mjs BASE_URL SCREENSHOT_DIR
//
// BASE_URL is a running `mozpool serve --simulate N` (tests/ui_browser.rs starts one).
// Exits non-zero on the first failed step; saves a screenshot of every page.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error('usage: browser.mjs BASE_URL SCREENSHOT_DIR');
  process.exit(2);
}
fs.mkdirSync(shots, { recursive: true });
const executablePath = process.env.MOZPOOL_CHROMIUM || '/usr/bin/chromium';
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mozpool-chromium-'));

const step = (what) => console.log(`[ui] ${what}`);
const problems = [];

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${profile}`,
  ].filter((a) => !a.startsWith('--user-data-dir')), // playwright makes its own fresh profile
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('status of 409')) problems.push(`console error: ${m.text()}`); });
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  const confirm = async () => { await page.locator('#confirm-ok').click(); };

  // Every form control has an accessible name.
  const unlabelled = () => page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
    .map((e) => e.id || e.name || e.outerHTML.slice(0, 60)));

  // 1. Pool page: loads, and shows devices reaching `ready` live, without a reload.
  step('pool page');
  await page.goto(`${base}/ui/`);
  await page.locator('#devices tbody tr').first().waitFor();
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.locator('#devices tbody tr[data-state="ready"]').first().waitFor({ timeout: 90000 });
  if (navigations.length) throw new Error(`the pool page reloaded: ${navigations}`);
  step(`pool page live: ${await page.locator('#devices tbody tr[data-state="ready"]').count()} ready`);
  let missing = await unlabelled();
  if (missing.length) throw new Error(`unlabelled controls on the pool page: ${missing}`);
  await page.locator('#filter').fill('sim-0002');
  if (await page.locator('#devices tbody tr:not([hidden])').count() !== 1) throw new Error('the search box does not filter');
  await page.locator('#filter').fill('');
  await shot('pool');

  // 2. Requests page: request any device; see the request become ready live.
  step('requests page: request a device');
  await page.goto(`${base}/ui/requests/`);
  await page.locator('#rq-image option[value="android"]').waitFor({ state: 'attached' });
  await page.selectOption('#rq-image', 'android');
  await page.fill('#rq-assignee', 'browser-test');
  await page.fill('#rq-duration', '600');
  await page.locator('#request-form button[type="submit"]').click();
  await confirm();
  await page.locator('#result', { hasText: 'created' }).waitFor();
  const created = await page.locator('#result').textContent();
  const id = Number(/#(\d+)/.exec(created)[1]);
  step(`request #${id} created (${created}); waiting for ready`);
  navigations.length = 0;
  await page.locator(`#request-${id}[data-state="ready"]`).waitFor({ timeout: 180000 });
  if (navigations.length) throw new Error(`the requests page reloaded: ${navigations}`);
  const held = (await page.locator(`#request-${id} td[data-label="Device"] a`).textContent()).trim();
  step(`request #${id} ready live with ${held}`);
  // Ask for that very device, willing to wait: the request queues and says why.
  await page.selectOption('#rq-device', held);
  await page.locator('details.criteria summary').click();
  await page.fill('#rq-wait', '300');
  await page.fill('#rq-assignee', 'browser-queue');
  await page.locator('#result').evaluate((e) => { e.textContent = ''; });
  await page.locator('#request-form button[type="submit"]').click();
  await confirm();
  await page.locator('#result', { hasText: /Request #\d+ created/ }).waitFor();
  const queuedId = Number(/#(\d+)/.exec(await page.locator('#result').textContent())[1]);
  await page.locator(`#request-${queuedId} td.queue`, { hasText: 'position 1' }).waitFor();
  step(`request #${queuedId} queued: ${await page.locator(`#request-${queuedId} td.queue`).textContent()}`);
  missing = await unlabelled();
  if (missing.length) throw new Error(`unlabelled controls on the requests page: ${missing}`);
  await shot('requests');

  // 3. The pool page shows who holds the device.
  await page.goto(`${base}/ui/`);
  await page.locator(`#devices tr[data-name="${held}"] td[data-label="Held by"]`, { hasText: 'browser-test' }).waitFor();

  // 4. Device page: power-cycle a free device and see it in its log.
  const free = await page.locator('#devices tbody tr.idle').first().getAttribute('data-name');
  step(`device page: power-cycle ${free}`);
  await page.goto(`${base}/ui/device/${free}/`);
  await page.locator('#flash-image option[value="android"]').waitFor({ state: 'attached' });
  await page.locator('button[data-action="power-cycle"]').click();
  await confirm();
  await page.locator('#result', { hasText: 'accepted' }).waitFor();
  await page.locator('#log tbody tr', { hasText: 'pc_power_cycling' }).first().waitFor();
  await page.locator('#dev-state', { hasText: /^pc_|^ready$/ }).waitFor();
  // A refused action shows the API's reason verbatim.
  await page.locator('button[data-action="maintenance-off"]').click();
  await confirm();
  await page.locator('#result.err', { hasText: 'Refused (409)' }).waitFor();
  step(`refusal shown: ${await page.locator('#result').textContent()}`);
  missing = await unlabelled();
  if (missing.length) throw new Error(`unlabelled controls on the device page: ${missing}`);
  await page.locator('#dev-state', { hasText: 'ready' }).waitFor({ timeout: 90000 });
  // Log paging: older entries load below the newest ones.
  if (await page.locator('#older').isVisible()) {
    const before = await page.locator('#log tbody tr').count();
    await page.locator('#older').click();
    await page.waitForFunction((n) => document.querySelectorAll('#log tbody tr').length > n, before);
    step(`log paging: ${before} -> ${await page.locator('#log tbody tr').count()} rows`);
  }
  // Keyboard: a button is reachable and focus is visible.
  await page.locator('button[data-action="ping"]').focus();
  await page.keyboard.press('Enter');
  await page.locator('#result', { hasText: 'Ping' }).waitFor();
  await shot('device');

  // 5. Return the request.
  step(`renew and return request #${id}`);
  await page.goto(`${base}/ui/requests/`);
  // A live update while the user is in the renew box (its text selected, about to be
  // typed over) must not take the box from under them.
  await page.locator(`#renew-${id}`).click();
  await page.keyboard.press('Control+A');
  await page.evaluate(async (rid) => {
    await fetch(`/api/request/${rid}/renew/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Requested-With': 'mozpool' },
      body: JSON.stringify({ duration: 900 }),
    });
  }, queuedId);
  await page.waitForTimeout(1500);
  await page.keyboard.type('1200');
  const typed = await page.locator(`#renew-${id}`).inputValue();
  if (typed !== '1200') throw new Error(`a live update took the renew box from under the user: it reads ${typed}`);
  await page.fill(`#renew-${id}`, '1200');
  await page.locator(`button[data-renew="${id}"]`).click();
  await confirm();
  await page.locator('#result', { hasText: /renewed|Refused|Failed|Cancelled/ }).waitFor();
  step(`renew: ${await page.locator('#result').textContent()}`);
  await page.locator('#result', { hasText: `Request #${id} renewed for 1200 s` }).waitFor();
  await page.locator(`button[data-return="${id}"]`).click();
  await confirm();
  await page.locator('#result', { hasText: 'returned' }).waitFor();
  await page.locator(`#request-${id}`).waitFor({ state: 'detached' });
  await page.goto(`${base}/ui/requests/?closed=1`);
  await page.locator(`#request-${id}[data-state="closed"]`).waitFor();
  await shot('requests-closed');

  // 6. Relay boards: the two-way test.
  step('relay boards page');
  await page.goto(`${base}/ui/relays/`);
  const test = page.locator('button[data-test]').first();
  if (await test.count()) {
    await test.click();
    await page.locator('.board .result', { hasText: /answered|No answer/ }).first().waitFor();
    step(`relay test: ${await page.locator('.board .result').first().textContent()}`);
  }
  await shot('relays');

  // 7. Force a device into a failure state from its page; the pool page shows it standing out.
  step(`force ${free} to failed_self_test`);
  await page.goto(`${base}/ui/device/${free}/`);
  await page.locator('#dev-state', { hasText: 'ready' }).waitFor({ timeout: 90000 });
  await page.fill('#force-to', 'failed_self_test');
  await page.locator('#force-form button[type="submit"]').click();
  await confirm();
  await page.locator('#result', { hasText: 'State changed' }).waitFor();
  await page.goto(`${base}/ui/`);
  await page.locator(`#devices tr.failed[data-name="${free}"]`).waitFor();
  await page.locator('#counts button.chip.failed').first().waitFor();
  await page.locator('#only-problems').check();
  const problemsShown = await page.locator('#devices tbody tr:not([hidden])').count();
  const problemRows = await page.locator('#devices tbody tr.failed, #devices tbody tr.out').count();
  if (problemsShown !== problemRows || problemsShown === 0) throw new Error('the failure filter does not filter');
  await page.locator('#only-problems').uncheck();
  await shot('pool-failed');

  // 8. Phone-sized screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/ui/`);
  await page.locator('#devices tbody tr').first().waitFor();
  await shot('pool-phone');
  await page.goto(`${base}/ui/device/${free}/`);
  await shot('device-phone');
  for (const u of ['/ui/', `/ui/device/${free}/`, '/ui/requests/', '/ui/relays/']) {
    await page.goto(`${base}${u}`);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    if (width > 390) throw new Error(`${u} is ${width}px wide on a 390px screen`);
  }
  step('phone-sized pages fit the screen');

  if (problems.length) throw new Error(`browser reported problems:\n${problems.join('\n')}`);
  step('all steps passed');
} catch (e) {
  failed = true;
  console.error(`[ui] FAILED: ${e.stack || e}`);
  if (problems.length) console.error(problems.join('\n'));
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
