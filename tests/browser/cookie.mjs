// The browser's cookie flow against a relay on loopback, in headless Chromium (Debian's
// `chromium`, driven by playwright-core). tests/e2e/browser.rs starts the relay, a destination
// agent in front of an echo service and a tunnel, then runs this with:
//   RELAY_PORT, SOURCE_TOKEN, PAGE_PORT, PAGE_CERT, PAGE_KEY, PAYLOAD_FILE, SCREENSHOT,
//   RESULT_FILE, CHROMIUM
// It serves the page on https://127.0.0.1:PAGE_PORT (PAGE_CERT, PAGE_KEY), the page POSTs the token to the relay's
// /cookie with credentials, opens the tunnel's WebSocket (the cookie carries the token), speaks
// the tunnel protocol (STREAM_START, DATA) and collects what comes back. Writes to RESULT_FILE:
// {"cookieStatus":..., "echoedHex":..., "log":[...]}.

import fs from 'node:fs';
import https from 'node:https';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const relayPort = env('RELAY_PORT');
const pagePort = Number(env('PAGE_PORT'));
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>splice-engine: browser source (cookie flow)</title>
<style>body{font-family:monospace;margin:1em} pre{background:#111;color:#9f9;padding:1em;white-space:pre-wrap}</style>
</head><body><h1>Tunnel from the browser</h1><p id="state">starting</p><pre id="log"></pre>
<script>
// Tunnel protocol (reference §3): each frame is a 2-byte big-endian length, then a protobuf
// Message: type=1, streamId=2, payload=4, serviceId=5, availableServiceIds=6, connectionId=7.
const DATA = 1, STREAM_START = 2, STREAM_RESET = 3, SESSION_RESET = 4, SERVICE_IDS = 5;
function varint(out, v) { while (v > 127) { out.push((v & 127) | 128); v = Math.floor(v / 128); } out.push(v); }
function frame(type, stream, service, connection, payload) {
  const m = [];
  varint(m, 1 << 3); varint(m, type);
  varint(m, 2 << 3); varint(m, stream);
  if (payload && payload.length) { varint(m, (4 << 3) | 2); varint(m, payload.length); m.push(...payload); }
  const s = new TextEncoder().encode(service);
  varint(m, (5 << 3) | 2); varint(m, s.length); m.push(...s);
  varint(m, 7 << 3); varint(m, connection);
  return new Uint8Array([m.length >> 8, m.length & 255, ...m]);
}
function decode(bytes) {
  const msg = { type: 0, payload: new Uint8Array(0), services: [] };
  let i = 0;
  const rv = () => { let v = 0, mul = 1, b; do { b = bytes[i++]; v += (b & 127) * mul; mul *= 128; } while (b & 128); return v; };
  while (i < bytes.length) {
    const key = rv(), field = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) { const v = rv(); if (field === 1) msg.type = v; if (field === 2) msg.stream = v; }
    else if (wire === 2) { const n = rv(); const b = bytes.subarray(i, i + n); i += n;
      if (field === 4) msg.payload = b; if (field === 5) msg.service = new TextDecoder().decode(b);
      if (field === 6) msg.services.push(new TextDecoder().decode(b)); }
    else throw new Error('wire type ' + wire);
  }
  return msg;
}
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const unhex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));
function log(line) { document.getElementById('log').textContent += line + '\\n'; window.lines.push(line); }
window.lines = [];
window.runTunnel = (relayPort, token, payloadHex) => new Promise(async (resolve) => {
  const state = (s) => { document.getElementById('state').textContent = s; };
  const relay = 'https://127.0.0.1:' + relayPort;
  let cookieStatus = 0;
  try {
    const r = await fetch(relay + '/cookie', { method: 'POST', credentials: 'include',
      headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) });
    cookieStatus = r.status;
    log('POST /cookie: ' + r.status + ' ' + (await r.text()).trim());
  } catch (e) { log('POST /cookie failed: ' + e); return resolve({ cookieStatus, echoedHex: '' }); }
  const payload = unhex(payloadHex);
  const ws = new WebSocket('wss://127.0.0.1:' + relayPort + '/tunnel?local-proxy-mode=source',
    'aws.iot.securetunneling-3.0');
  ws.binaryType = 'arraybuffer';
  let got = [];
  let started = false;
  const done = (why) => { log(why); state(why); try { ws.close(); } catch (e) {} resolve({ cookieStatus, echoedHex: hex(got) }); };
  ws.onopen = () => log('WebSocket open, protocol ' + ws.protocol);
  ws.onclose = (e) => done('WebSocket closed: ' + e.code + ' ' + e.reason);
  ws.onerror = () => log('WebSocket error');
  ws.onmessage = (e) => {
    const b = new Uint8Array(e.data);
    for (let i = 0; i + 2 <= b.length;) {
      const n = (b[i] << 8) | b[i + 1];
      const m = decode(b.subarray(i + 2, i + 2 + n));
      i += 2 + n;
      if (m.type === SERVICE_IDS && !started) {
        started = true;
        log('SERVICE_IDS: ' + m.services.join(', ') + '; STREAM_START on echo, then ' + payload.length + ' bytes');
        ws.send(frame(STREAM_START, 1, 'echo', 1));
        for (let off = 0; off < payload.length; off += 32 * 1024) {
          ws.send(frame(DATA, 1, 'echo', 1, payload.subarray(off, off + 32 * 1024)));
        }
      } else if (m.type === DATA) {
        got.push(...m.payload);
        if (got.length >= payload.length) {
          log('echoed: "' + new TextDecoder().decode(new Uint8Array(got.slice(0, 60))) + '..."');
          return done('done: ' + got.length + ' bytes back');
        }
      } else if (m.type === STREAM_RESET || m.type === SESSION_RESET) {
        return done('reset (type ' + m.type + ')');
      }
    }
  };
});
</script></body></html>`;

// HTTPS with the relay's own certificate: a page on https://127.0.0.1 is the relay's own
// site (a site is scheme and host, not the port), so the cookie is first-party. Served over
// http://, the page is another site and Chromium keeps the cookie from the WebSocket.
const tls = { cert: fs.readFileSync(env('PAGE_CERT')), key: fs.readFileSync(env('PAGE_KEY')) };
const server = https.createServer(tls, (req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(page);
});
await new Promise((r) => server.listen(pagePort, '127.0.0.1', r));

const userDataDir = `${process.env.TMPDIR || '/tmp'}/splice-chromium-${process.pid}`;
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: env('CHROMIUM'),
  headless: true,
  // The relay's certificate is from the test's own CA.
  ignoreHTTPSErrors: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors'],
  timeout: 60000,
});
let result = { cookieStatus: 0, echoedHex: '', log: [] };
try {
  const tab = context.pages()[0] || (await context.newPage());
  tab.on('console', (m) => console.error('page:', m.text()));
  await tab.goto(`https://127.0.0.1:${pagePort}/`, { timeout: 30000 });
  const r = await Promise.race([
    tab.evaluate(([p, t, h]) => window.runTunnel(p, t, h), [relayPort, env('SOURCE_TOKEN'), fs.readFileSync(env('PAYLOAD_FILE')).toString('hex')]),
    new Promise((res) => setTimeout(() => res({ cookieStatus: -1, echoedHex: '' }), 60000)),
  ]);
  result = { ...r, log: await tab.evaluate(() => window.lines) };
  await tab.screenshot({ path: env('SCREENSHOT'), fullPage: true });
} finally {
  await context.close();
  server.close();
}
fs.writeFileSync(env('RESULT_FILE'), JSON.stringify(result));
// The page server's keep-alive sockets would hold the process open.
process.exit(0);
