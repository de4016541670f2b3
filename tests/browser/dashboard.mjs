// Drives the dashboard in headless Chromium for tests/it/dashboard.rs.
//
// Usage: node dashboard.mjs <one-time login url> <artifact dir>
//
// The Rust test and this script talk in JSON lines: this script prints {"step": ...} lines on
// stdout and reads one JSON line on stdin once it says "ready" (what the test published after the
// page loaded). Everything else goes to stderr. Exit code 0 when every check passed.
//
// Checks: the one-time link logs in (cookie session) and the page goes live over ATP; the
// dashboard's responses carry the strict Content-Security-Policy; an event published after the
// page loaded appears in the stream; an event whose payload holds markup is shown as text and runs
// no script; a pending action can be approved and leaves the pending list; a human-input request
// can be answered. A screenshot goes to <artifact dir>/dashboard.png.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [url, artifacts] = process.argv.slice(2);
if (!url || !artifacts) {
  process.stderr.write('usage: node dashboard.mjs <login url> <artifact dir>\n');
  process.exit(2);
}
const executablePath = process.env.AIVENTBUS_CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 30000;
const EXPECTED_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const say = (step, extra = {}) => process.stdout.write(JSON.stringify({ step, ...extra }) + '\n');
const log = (...parts) => process.stderr.write('[dashboard.mjs] ' + parts.join(' ') + '\n');

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
async function nextInput() {
  const { value, done } = await lines.next();
  if (done) throw new Error('the test closed stdin before sending what it published');
  return JSON.parse(value);
}

const profile = mkdtempSync(join(tmpdir(), 'aiventbus-chromium-'));
mkdirSync(artifacts, { recursive: true });
let context;
let page;
const consoleLines = [];
const pageErrors = [];

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--headless',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1440, height: 900 },
    timeout: 60000,
  });
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('console', (message) => consoleLines.push(message.text()));
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  page.on('dialog', (dialog) => {
    pageErrors.push('unexpected dialog: ' + dialog.message());
    dialog.dismiss();
  });

  // 1. The one-time link sets the session cookie and lands on the dashboard.
  const dashboardResponse = page.waitForResponse((response) => new URL(response.url()).pathname === '/' && response.request().method() === 'GET');
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  const landed = await dashboardResponse;
  check(landed.status() === 200, `GET / after login answered ${landed.status()}`);
  check(landed.headers()['content-security-policy'] === EXPECTED_CSP, `CSP on /: ${landed.headers()['content-security-policy']}`);
  const cookies = await context.cookies();
  const sessionCookie = cookies.find((cookie) => cookie.name === 'aiventbus_session');
  check(sessionCookie, 'no aiventbus_session cookie after the login link');
  check(sessionCookie.httpOnly, 'the session cookie is not HttpOnly');
  check(sessionCookie.sameSite === 'Strict', `the session cookie is SameSite=${sessionCookie.sameSite}`);
  check(!(await page.evaluate(() => document.cookie)).includes('aiventbus_session'), 'page script can read the session cookie');
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  await page.locator('#who', { hasText: '·' }).waitFor();
  log('logged in as', await page.locator('#who').textContent());

  // The same link cannot be used twice.
  const replay = await context.request.get(url, { maxRedirects: 0, failOnStatusCode: false });
  check(replay.status() >= 400, `a second use of the one-time link answered ${replay.status()}`);

  say('ready');
  const published = await nextInput();
  log('test published', JSON.stringify(published));

  // 2. An event published after the page loaded shows up live.
  const liveRow = page.locator(`#stream tr[data-topic="${published.live_topic}"]`, { hasText: published.live_marker });
  await liveRow.waitFor();
  say('live_event_seen');

  // 3. Markup inside an event is text: visible literally, never parsed, never run.
  const xssRow = page.locator('#stream tr', { hasText: published.xss_marker });
  await xssRow.waitFor();
  const markupVisible = await xssRow.locator('.preview').textContent();
  check(markupVisible.includes(published.xss_text), `the row does not show the markup as text: ${markupVisible}`);
  await xssRow.click();
  await page.locator('#detail-json', { hasText: published.xss_marker }).waitFor();
  const detail = await page.locator('#detail-json').textContent();
  check(detail.includes(published.xss_text), 'the event detail does not show the markup as text');
  const injected = await page.evaluate(() => ({
    flag: window.__aiventbus_xss,
    images: document.querySelectorAll('main img').length,
    scripts: Array.from(document.scripts).map((script) => script.src),
  }));
  check(injected.flag === undefined, 'a script from an event ran (window.__aiventbus_xss is set)');
  check(injected.images === 0, `event markup created ${injected.images} <img> element(s)`);
  check(injected.scripts.every((src) => src.endsWith('/assets/app.js')), `unexpected scripts: ${injected.scripts}`);
  check(!consoleLines.some((line) => line.includes('aiventbus-xss')), 'the injected handler logged to the console');
  await page.locator('#trace-list li').first().waitFor();
  say('markup_inert');

  // 4. A pending action: approve it and see it leave the list.
  if (published.action_id) {
    await page.locator('.tab[data-tab="approvals"]').click();
    const card = page.locator(`#approvals [data-action-id="${published.action_id}"]`);
    await card.waitFor();
    check(await page.locator('#badge-approvals').isVisible(), 'the approvals badge is hidden with an action pending');
    await page.screenshot({ path: join(artifacts, 'dashboard-approvals.png') });
    await card.locator('button.approve').click();
    await card.waitFor({ state: 'detached' });
    // The list reloads on the action.* events that follow; the action must not come back.
    // (The stream is on the hidden Events tab: attached is what counts.)
    await page.locator('#stream tr[data-topic="action.approved"]').first().waitFor({ state: 'attached' });
    await page.locator('#approvals-empty').waitFor({ state: 'visible' });
    check((await card.count()) === 0, 'the approved action is still listed');
    say('approved', { id: published.action_id });
  }

  // 5. A human-input request: answer it and see it leave the list.
  if (published.request_id) {
    await page.locator('.tab[data-tab="requests"]').click();
    const card = page.locator(`#requests [data-request-id="${published.request_id}"]`);
    await card.waitFor();
    check((await card.textContent()).includes('Deploy <b>main</b> or release?'), 'the question is not shown as text');
    await card.locator('input').fill(published.answer);
    await card.locator('button.primary').click();
    await card.waitFor({ state: 'detached' });
    await page.locator('#requests-empty').waitFor({ state: 'visible' });
    say('answered', { id: published.request_id });
  }

  // 6. The other views load without errors.
  const shows = {
    requests: '#requests-empty, #requests .card',
    agents: '#agents tr[data-agent-id]',
    // Either the producers' capabilities or the plain statement that the service is not there.
    producers: '#producers tr, #producers-down:has-text("producers service not running")',
    knowledge: '#knowledge-empty, #knowledge tr',
    memories: '#memories-empty, #memories tr',
    health: '#services tr[data-service="bus"]',
  };
  for (const [tab, selector] of Object.entries(shows)) {
    await page.locator(`.tab[data-tab="${tab}"]`).click();
    await page.locator(`#panel-${tab}.active`).waitFor();
    await page.locator(selector).first().waitFor();
  }
  check((await page.locator('#services tr[data-service="gateway"] .s-running').count()) === 1, 'the gateway is not shown running');
  await page.screenshot({ path: join(artifacts, 'dashboard-health.png') });
  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join('; ')}`);

  // The screenshot: the live stream with the trace of the first event open.
  await page.locator('.tab[data-tab="events"]').click();
  await liveRow.click();
  await page.locator('#trace-list li.selected').waitFor();
  await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: false });
  say('done');
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (error) {
  log('FAILED:', error && error.stack ? error.stack : String(error));
  if (consoleLines.length) log('console:', consoleLines.join(' | '));
  if (pageErrors.length) log('page errors:', pageErrors.join(' | '));
  say('failed', { error: String(error && error.message ? error.message : error) });
  if (page) {
    try {
      await page.screenshot({ path: join(artifacts, 'dashboard-failure.png'), fullPage: true });
    } catch (_) {
      // No screenshot then.
    }
  }
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
