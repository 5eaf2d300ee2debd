// The relay console and the browser source in headless Chromium (Debian's `chromium`, driven by
// playwright-core). tests/e2e/browser.rs starts a relay with an API token and runs this with:
//   API_PORT, RELAY_PORT, API_TOKEN, STEP_DIR, SHOT_PREFIX, RESULT_FILE, CHROMIUM
// The page's flow, with the test doing its part at each step: STEP_DIR/<step>.json is what the
// page has for the test, and the test answers with STEP_DIR/<step>.ok.
//   1. /console without a login: redirected to /console/login; the data answers 401.
//   2. Log in with the API token; open a tunnel (service echo) from the dialog; read the tokens.
//      Step "destination-token": the test starts its destination agent with it.
//   3. "Open browser source": the page on the relay's TLS port connects with the source token;
//      lines in line mode (CRLF, then LF), keystrokes in raw mode; what comes back is recorded.
//      Then a new stream to the service "bye", which writes a line and closes: the reset.
//   4. Rotate the source token from the console (step "rotated": the test checks the relay),
//      then close the tunnel (step "closed").
// Screenshots: SHOT_PREFIX-console-open-dialog.png, -browser-source.png, -console-list.png.
// Writes RESULT_FILE: {"redirectedTo", "unauthorizedStatus", "received" (hex),
// "receivedAfterReset", "stateAfterReset", "hashAfterLoad",
// "sourceStates", "sourceAfterRotate", "log": [...]}.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const api = `http://127.0.0.1:${env('API_PORT')}`;
const stepDir = env('STEP_DIR');
const shot = (name) => `${env('SHOT_PREFIX')}-${name}.png`;
const log = [];
const say = (line) => { log.push(line); console.error(line); };
const result = { log };

async function step(name, data) {
  say(`step ${name}: waiting for the test`);
  fs.writeFileSync(path.join(stepDir, `${name}.json`), JSON.stringify(data));
  const ok = path.join(stepDir, `${name}.ok`);
  const deadline = Date.now() + 90000;
  while (!fs.existsSync(ok)) {
    if (Date.now() > deadline) throw new Error(`the test did not answer step ${name}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  say(`step ${name}: done`);
}

// Waits until `tab` has received `n` bytes in the browser source.
async function received(tab, n) {
  await tab.waitForFunction((n) => window.sourceStatus.received.length >= n, n, { timeout: 30000 });
}

const userDataDir = `${process.env.TMPDIR || '/tmp'}/splice-chromium-console-${process.pid}`;
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: env('CHROMIUM'),
  headless: true,
  // The relay's certificate is from the test's own CA.
  ignoreHTTPSErrors: true,
  viewport: { width: 1400, height: 800 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors'],
  timeout: 60000,
});
try {
  const tab = context.pages()[0] || (await context.newPage());
  tab.on('console', (m) => say('console page: ' + m.text()));
  tab.on('dialog', (d) => d.accept());

  // 1. No login yet.
  await tab.goto(`${api}/console`, { timeout: 30000 });
  result.redirectedTo = new URL(tab.url()).pathname;
  result.unauthorizedStatus = await tab.evaluate(async () =>
    (await fetch('/console/api/tunnels', { headers: { 'x-splice-console': '1' } })).status);
  say(`without a login: at ${result.redirectedTo}, data ${result.unauthorizedStatus}`);

  // 2. Log in, open a tunnel.
  await tab.fill('#token', env('API_TOKEN'));
  await tab.click('button[type=submit]');
  await tab.waitForURL(`${api}/console`, { timeout: 30000 });
  await tab.waitForFunction(() => document.getElementById('auth').textContent.includes('Logged in'));
  await tab.click('#open');
  await tab.fill('#open-services', 'echo, bye');
  await tab.fill('#open-minutes', '10');
  await tab.fill('#open-thing', 'pump-7');
  await tab.fill('#open-description', 'browser e2e');
  await tab.click('#open-submit');
  await tab.waitForSelector('#tokens-dialog[open] #token-destinationAccessToken', { timeout: 30000 });
  const tunnelId = await tab.textContent('#tokens-id');
  const destination = await tab.textContent('#token-destinationAccessToken');
  const source = await tab.textContent('#token-sourceAccessToken');
  result.tunnelId = tunnelId;
  await tab.screenshot({ path: shot('console-open-dialog') });
  await step('destination-token', { tunnelId, destination });

  // 3. The browser source, from the console's link.
  const [src] = await Promise.all([
    context.waitForEvent('page', { timeout: 30000 }),
    tab.click('.source-link[data-service=echo]'),
  ]);
  src.on('console', (m) => say('source page: ' + m.text()));
  await src.waitForLoadState('load');
  result.hashAfterLoad = await src.evaluate(() => location.hash);
  result.sourceUrl = src.url().split('#')[0];
  await src.waitForFunction(() => window.sourceStatus.state.startsWith('connected'), null, { timeout: 30000 });
  // Line mode, Enter sends CRLF.
  await src.click('#term');
  await src.keyboard.type('hello');
  await src.keyboard.press('Enter');
  await received(src, 7);
  // Line mode, LF; a Backspace edits the line before it is sent.
  await src.selectOption('#eol', 'lf');
  await src.click('#term');
  await src.keyboard.type('worlx');
  await src.keyboard.press('Backspace');
  await src.keyboard.type('d');
  await src.keyboard.press('Enter');
  await received(src, 13);
  // Raw mode: each keystroke as typed (Backspace is DEL, Enter is CR), nothing edited here.
  await src.check('#mode-raw');
  await src.click('#term');
  await src.keyboard.type('ab');
  await src.keyboard.press('Backspace');
  await src.keyboard.press('Enter');
  await received(src, 17);
  // Give a stray extra byte the chance to arrive (it would show in the exact comparison).
  await src.waitForTimeout(300);
  const hex = () => src.evaluate(() =>
    window.sourceStatus.received.map((b) => b.toString(16).padStart(2, '0')).join(''));
  result.received = await hex();
  // A new stream to the service "bye", which says bye and closes: the page shows the reset.
  await src.selectOption('#service', 'bye');
  await src.click('#restart');
  await src.waitForFunction(() => window.sourceStatus.resets >= 1, null, { timeout: 30000 });
  result.receivedAfterReset = await hex();
  result.stateAfterReset = await src.evaluate(() => window.sourceStatus.state);
  await src.screenshot({ path: shot('browser-source') });

  // The console's list: the bytes and the chart (a poll each second).
  await tab.click('#tokens-close');
  await tab.waitForFunction(
    (id) => {
      const c = document.querySelector(`tr[data-tunnel="${id}"] canvas.chart`);
      return c && Number(c.dataset.points) >= 5;
    },
    tunnelId,
    { timeout: 30000 },
  );
  result.listBytes = await tab.textContent(`tr[data-tunnel="${tunnelId}"] td.bytes`);
  await tab.screenshot({ path: shot('console-list') });

  // 4. Rotate the source token: the connected browser source is dropped.
  await tab.click(`tr[data-tunnel="${tunnelId}"] button.rotate`);
  await tab.selectOption('#rotate-side', 'SOURCE');
  await tab.click('#rotate-submit');
  await tab.waitForSelector('#tokens-dialog[open] #token-sourceAccessToken', { timeout: 30000 });
  const rotated = await tab.textContent('#token-sourceAccessToken');
  result.rotatedDiffers = rotated !== source && rotated.length > 0;
  result.rotatedHasDestination = (await tab.$('#token-destinationAccessToken')) !== null;
  await tab.click('#tokens-close');
  await src.waitForFunction(() => window.sourceStatus.state.startsWith('disconnected'), null, { timeout: 30000 });
  result.sourceAfterRotate = await src.evaluate(() => window.sourceStatus.state);
  result.sourceStates = await src.evaluate(() => window.sourceStatus.log);
  await step('rotated', { tunnelId, source: rotated });

  // Close from the console (its confirm() is accepted above).
  await tab.click(`tr[data-tunnel="${tunnelId}"] button.close`);
  await tab.waitForSelector(`tr[data-tunnel="${tunnelId}"][data-status=CLOSED]`, { timeout: 30000 });
  await step('closed', { tunnelId });
} catch (e) {
  result.error = String(e && e.stack || e);
  say('failed: ' + result.error);
} finally {
  await context.close();
}
fs.writeFileSync(env('RESULT_FILE'), JSON.stringify(result));
process.exit(0);
