// End-to-end test of mozpool's web page in real headless Chromium (Debian's package),
// driven with playwright-core over the DevTools protocol. No browser is downloaded.
//
//   node tests/ui/browser.mjs BASE_URL SCREENSHOT_DIR [SEEDED_JSON]
//
// BASE_URL is a running `mozpool serve --simulate N` (tests/ui_browser.rs starts one).
// SEEDED_JSON says what history the data directory was seeded with (tests/ui_browser.rs):
// {"flaky", "failures": [[down_ms, up_ms]...], "busy_hour", "busy_devices"}; with it the
// history pictures are checked first.
// Exits non-zero on the first failed step; saves a screenshot of every page.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [base, shots, seededJson] = process.argv.slice(2);
const seeded = seededJson ? JSON.parse(seededJson) : null;
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
  let missing = [];

  // Every form control has an accessible name.
  const unlabelled = () => page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
    .map((e) => e.id || e.name || e.outerHTML.slice(0, 60)));

  // 0. History pictures from the seeded past.
  if (seeded) {
    step(`history: timeline of ${seeded.flaky}`);
    await page.goto(`${base}/ui/device/${seeded.flaky}/`);
    const segs = await page.locator('svg.timeline g.seg.failed').evaluateAll((gs) => gs.map((g) => ({
      start: Number(g.dataset.start), end: Number(g.dataset.end), title: g.querySelector('title').textContent,
      x: Number(g.querySelector('rect').getAttribute('x')),
      band: Number(g.closest('g.band').dataset.start), focusable: g.getAttribute('tabindex') === '0',
    })));
    if (segs.length !== seeded.failures.length) throw new Error(`timeline shows ${segs.length} failed segments, not ${seeded.failures.length}: ${JSON.stringify(segs)}`);
    const DAY = 24 * 3600 * 1000;
    seeded.failures.forEach(([down, up], i) => {
      const s = segs[i];
      if (s.start !== down || s.end !== up) throw new Error(`failed segment ${i} is ${s.start}-${s.end}, not ${down}-${up}`);
      // The segment sits where its time is along the day's band (64 + 648 units wide).
      const x = 64 + ((down - s.band) / DAY) * 648;
      if (Math.abs(s.x - x) > 0.5) throw new Error(`failed segment ${i} is drawn at x=${s.x}, not ${x}`);
      if (!s.focusable || !/^FAILED: failed_/.test(s.title)) throw new Error(`segment ${i} is not focusable with its state: ${s.title}`);
    });
    // The page's count is the history API's, one per seeded failure.
    const count = Number((await page.locator('#hist-failures').textContent()).trim());
    const api = await (await page.request.get(`${base}/api/device/${seeded.flaky}/history/`)).json();
    if (count !== api.failures || count !== seeded.failures.length) throw new Error(`the page counts ${count} failures, the API ${api.failures}, seeded ${seeded.failures.length}`);
    if (!(await page.locator('#hist-since').textContent()).trim()) throw new Error('no time since the last failure');
    // Keyboard: Tab reaches a segment and its title says what it was.
    await page.locator('svg.timeline g.seg.failed').first().focus();
    const focused = await page.evaluate(() => document.activeElement.getAttribute('aria-label'));
    if (!/FAILED: failed_\w+ from/.test(focused || '')) throw new Error(`focused segment says ${focused}`);
    step(`timeline: ${segs.length} failed segments at the seeded times; "${focused.slice(0, 80)}…"`);
    await shot('history-device');
    // The switch works without script: 7 days, 7 bands.
    await page.locator('nav.switch a[data-window="7d"]').click();
    await page.waitForURL(/window=7d/);
    const bands = await page.locator('svg.timeline g.band').count();
    if (bands !== 7) throw new Error(`the 7d timeline has ${bands} bands`);
    if (await page.locator('svg.timeline g.seg.failed').count() < seeded.failures.length) throw new Error('the 7d timeline lost the failures');

    step('history: pool utilisation and flaky devices');
    await page.goto(`${base}/ui/`);
    const bars = await page.locator('svg.utilisation g.bar').evaluateAll((gs) => gs.map((g) => ({
      start: Number(g.dataset.start), inUse: Number(g.dataset.inUse), total: Number(g.dataset.total),
      height: [...g.querySelectorAll('rect')].reduce((h, r) => h + Number(r.getAttribute('height')), 0),
    })));
    if (!bars.length) throw new Error('the utilisation chart has no bars');
    const peak = bars.reduce((a, b) => (b.inUse > a.inUse ? b : a));
    if (peak.start !== seeded.busy_hour) throw new Error(`the chart peaks at ${new Date(peak.start).toISOString()}, not the busy hour ${new Date(seeded.busy_hour).toISOString()}`);
    if (peak.inUse < seeded.busy_devices) throw new Error(`the busy hour shows ${peak.inUse} in use, not ${seeded.busy_devices}`);
    const inUseHeight = (b) => b.height * (b.inUse / (b.total || 1));
    if (bars.some((b) => b !== peak && inUseHeight(b) >= inUseHeight(peak))) throw new Error('another bar has as much in use as the busy hour');
    const flaky = await page.locator('#flaky tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.name));
    if (flaky[0] !== seeded.flaky) throw new Error(`the flaky table lists ${flaky}, not ${seeded.flaky} first`);
    const href = await page.locator('#flaky tbody tr').first().locator('a').getAttribute('href');
    if (!href.startsWith(`/ui/device/${seeded.flaky}/`)) throw new Error(`the flaky row links ${href}`);
    step(`pool chart peaks at ${new Date(peak.start).toISOString()} with ${peak.inUse} in use; flaky: ${flaky.join(', ')}`);
    await page.locator('#history').scrollIntoViewIfNeeded();
    await shot('history-pool');

    step('history: request waits');
    await page.goto(`${base}/ui/requests/`);
    await page.locator('svg.waits g.marker.p50').waitFor({ state: 'attached' });
    await page.locator('svg.waits g.marker.p95').waitFor({ state: 'attached' });
    const reasons = await page.locator('#wait-reasons tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.reason));
    if (reasons[0] !== 'all_held' || !reasons.includes('preparing')) throw new Error(`wait reasons: ${reasons}`);
    const p50 = (await page.locator('#hist-p50').textContent()).trim();
    const p95 = (await page.locator('#hist-p95').textContent()).trim();
    step(`waits: p50 ${p50}, p95 ${p95}, reasons ${reasons.join(', ')}`);
    await page.locator('#history').scrollIntoViewIfNeeded();
    await shot('history-requests');
  }

  // 1. Pool page: loads, and shows devices reaching `ready` live, without a reload.
  step('pool page');
  await page.goto(`${base}/ui/`);
  await page.locator('#devices tbody tr').first().waitFor();
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.locator('#devices tbody tr[data-state="ready"]').first().waitFor({ timeout: 90000 });
  if (navigations.length) throw new Error(`the pool page reloaded: ${navigations}`);
  step(`pool page live: ${await page.locator('#devices tbody tr[data-state="ready"]').count()} ready`);
  missing = await unlabelled();
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
  // The request's own page: details and its log, linked from the list.
  await page.locator(`#request-${id} a[href="/ui/request/${id}/"]`).click();
  await page.locator('#rq-state', { hasText: 'ready' }).waitFor();
  await page.locator('#log tbody tr').first().waitFor();
  step(`request page: ${await page.locator('#log tbody tr').count()} log lines`);
  missing = await unlabelled();
  if (missing.length) throw new Error(`unlabelled controls on the request page: ${missing}`);
  await shot('request');
  await page.goto(`${base}/ui/requests/`);
  await page.locator(`#rq-device option[value="${held}"]`).waitFor({ state: 'attached' });
  await page.locator('#rq-image option[value="android"]').waitFor({ state: 'attached' });
  await page.selectOption('#rq-image', 'android');
  await page.fill('#rq-duration', '600');
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
    // The page is live: the test's outcome shows in the board's counts without a reload.
    const health = page.locator('.board .board-health').first();
    const before = await health.textContent();
    navigations.length = 0;
    await test.click();
    await page.locator('.board .test-result', { hasText: /answered|No answer/ }).first().waitFor();
    step(`relay test: ${await page.locator('.board .test-result').first().textContent()}`);
    await page.waitForFunction((b) => document.querySelector('.board .board-health').textContent !== b, before);
    if (navigations.length) throw new Error(`the relay page reloaded: ${navigations}`);
    step(`relay page live: ${(await health.textContent()).replace(/\s+/g, ' ').trim()}`);
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
  if (seeded) {
    await page.goto(`${base}/ui/device/${seeded.flaky}/?window=7d`);
    await page.locator('#history').scrollIntoViewIfNeeded();
    await shot('history-device-phone');
  }
  const extra = seeded ? [`/ui/device/${seeded.flaky}/?window=30d`, `/ui/request/${id}/`] : [`/ui/request/${id}/`];
  for (const u of ['/ui/', `/ui/device/${free}/`, '/ui/requests/', '/ui/relays/', ...extra]) {
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
