// The browser source: one service of a tunnel, from the browser. The console links here with
// the source token in the URL's fragment (#tunnel=..&service=..&token=..), which no request
// carries; this page reads it, wipes it from the address bar, POSTs it to this relay's
// /cookie (same origin), opens wss://<this host>/tunnel with the cookie, and speaks the
// tunnel protocol (docs/relay.md, reference §3) to the destination agent's service.
'use strict';

// Tunnel frames: a 2-byte big-endian length, then a protobuf Message: type=1, streamId=2,
// ignorable=3, payload=4, serviceId=5, availableServiceIds=6, connectionId=7.
const DATA = 1, STREAM_START = 2, STREAM_RESET = 3, SESSION_RESET = 4, SERVICE_IDS = 5;
const CONNECTION_RESET = 7;
const MAX_CHUNK = 32 * 1024;
const enc = new TextEncoder(), dec = new TextDecoder();

function varint(out, v) { while (v > 127) { out.push((v & 127) | 128); v = Math.floor(v / 128); } out.push(v); }
function frame(type, stream, service, connection, payload) {
  const m = [];
  varint(m, 1 << 3); varint(m, type);
  varint(m, 2 << 3); varint(m, stream);
  if (payload && payload.length) { varint(m, (4 << 3) | 2); varint(m, payload.length); for (const b of payload) m.push(b); }
  const s = enc.encode(service);
  varint(m, (5 << 3) | 2); varint(m, s.length); m.push(...s);
  varint(m, 7 << 3); varint(m, connection);
  return new Uint8Array([m.length >> 8, m.length & 255, ...m]);
}
function decode(bytes) {
  const msg = { type: 0, stream: 0, payload: new Uint8Array(0), services: [], service: '', connection: 0 };
  let i = 0;
  const rv = () => { let v = 0, mul = 1, b; do { b = bytes[i++]; v += (b & 127) * mul; mul *= 128; } while (b & 128); return v; };
  while (i < bytes.length) {
    const key = rv(), field = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) {
      const v = rv();
      if (field === 1) msg.type = v;
      if (field === 2) msg.stream = v;
      if (field === 7) msg.connection = v;
    }
    else if (wire === 2) {
      const n = rv(); const b = bytes.subarray(i, i + n); i += n;
      if (field === 4) msg.payload = b;
      if (field === 5) msg.service = dec.decode(b);
      if (field === 6) msg.services.push(dec.decode(b));
    } else throw new Error('unexpected protobuf wire type ' + wire);
  }
  return msg;
}

const $ = (id) => document.getElementById(id);
// What the page has seen, for the eye and for tests.
const status = { state: 'starting', received: [], sent: 0, resets: 0, log: [] };
window.sourceStatus = status;

const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, fontSize: 14 });
term.open($('term'));
term.focus();

function setState(text, cls) {
  status.state = text;
  status.log.push(text);
  $('state').textContent = text;
  $('state').className = 'state ' + (cls || '');
}
function note(text) { term.write('\r\n\x1b[33m[' + text + ']\x1b[0m\r\n'); }
function counts() { $('counts').textContent = 'sent ' + status.sent + ' B, received ' + status.received.length + ' B'; }

const params = new URLSearchParams(location.hash.slice(1));
// The token must not stay in the address bar, the history or a bookmark.
history.replaceState(null, '', location.pathname);
const token = params.get('token');
let service = params.get('service') || '';
$('tunnel').textContent = params.get('tunnel') || '';

let ws = null, stream = 0, streamOpen = false, connection = 1;
let line = '';
let pending = new Uint8Array(0);

function send(bytes) {
  if (!ws || ws.readyState !== WebSocket.OPEN || !streamOpen) {
    note('not sent: no open stream');
    return;
  }
  for (let off = 0; off < bytes.length; off += MAX_CHUNK) {
    const chunk = bytes.subarray(off, off + MAX_CHUNK);
    ws.send(frame(DATA, stream, service, connection, chunk));
    status.sent += chunk.length;
  }
  counts();
}

// A new stream, to the service chosen now; one still open is reset first (its connection to
// the service ends).
function startStream() {
  if (streamOpen) {
    ws.send(frame(STREAM_RESET, stream, service, connection));
    note('stream ' + stream + ' reset by you');
  }
  service = $('service').value || service;
  stream += 1;
  streamOpen = true;
  ws.send(frame(STREAM_START, stream, service, connection));
  setState('connected: stream ' + stream + ' to ' + service, 'OPEN');
  $('restart').disabled = false;
}

function onFrame(m) {
  if (m.type === SERVICE_IDS) {
    const services = m.services.length ? m.services : [service];
    $('service').replaceChildren(...services.map((s) => new Option(s, s, false, s === service)));
    if (!services.includes(service)) service = services[0];
    $('service').value = service;
    if (!streamOpen) startStream();
  } else if (m.type === DATA) {
    if (m.stream !== stream) return;
    for (const b of m.payload) status.received.push(b);
    term.write(m.payload);
    counts();
  } else if (m.type === STREAM_RESET || m.type === CONNECTION_RESET) {
    // The destination's service closed our connection (V3: CONNECTION_RESET; V1 and V2, or
    // when it could not connect at all: STREAM_RESET).
    if (m.stream !== stream || !streamOpen) return;
    if (m.type === CONNECTION_RESET && m.connection && m.connection !== connection) return;
    streamOpen = false;
    status.resets += 1;
    setState('stream ' + stream + ' reset by the destination', 'error');
    note('stream reset: the destination closed the connection to ' + service + '; "New stream" opens another');
  } else if (m.type === SESSION_RESET) {
    streamOpen = false;
    status.resets += 1;
    setState('session reset: the destination agent left', 'error');
    note('session reset');
  }
}

function onMessage(e) {
  const got = new Uint8Array(e.data);
  const buf = new Uint8Array(pending.length + got.length);
  buf.set(pending); buf.set(got, pending.length);
  let i = 0;
  while (i + 2 <= buf.length) {
    const n = (buf[i] << 8) | buf[i + 1];
    if (i + 2 + n > buf.length) break;
    onFrame(decode(buf.subarray(i + 2, i + 2 + n)));
    i += 2 + n;
  }
  pending = buf.slice(i);
}

async function connect() {
  if (!token) {
    setState('no token: open this page from the relay console ("Open browser source")', 'error');
    return;
  }
  setState('setting the cookie');
  let r;
  try {
    r = await fetch('/cookie', { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token }) });
  } catch (err) {
    setState('POST /cookie failed: ' + err, 'error');
    return;
  }
  if (!r.ok) {
    const why = await r.json().then((j) => j.error).catch(() => '');
    setState('the relay refused the token: ' + r.status + ' ' + why, 'error');
    return;
  }
  setState('connecting');
  ws = new WebSocket('wss://' + location.host + '/tunnel?local-proxy-mode=source', 'aws.iot.securetunneling-3.0');
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => { setState('waiting for the destination'); $('disconnect').disabled = false; };
  ws.onmessage = onMessage;
  ws.onerror = () => note('WebSocket error');
  ws.onclose = (e) => {
    streamOpen = false;
    $('restart').disabled = true;
    $('disconnect').disabled = true;
    setState('disconnected (' + e.code + (e.reason ? ' ' + e.reason : '') + '); rotate the source token to connect again', 'error');
  };
}

// Keystrokes: raw mode sends them as xterm gives them (Enter is CR, Backspace DEL, Ctrl-C
// ETX); line mode edits a line here and sends it on Enter with the chosen line end.
term.onData((d) => {
  if ($('mode-raw').checked) {
    send(enc.encode(d));
    return;
  }
  // An escape sequence (a cursor or function key) does not edit the line.
  if (d.length > 1 && d[0] === '\x1b') return;
  for (const ch of d) {
    if (ch === '\r' || ch === '\n') {
      const eol = $('eol').value === 'crlf' ? '\r\n' : '\n';
      term.write('\r\n');
      send(enc.encode(line + eol));
      line = '';
    } else if (ch === '\x7f' || ch === '\b') {
      if (line.length) {
        line = Array.from(line).slice(0, -1).join('');
        term.write('\b \b');
      }
    } else if (ch === '\x03') {
      line = '';
      term.write('^C\r\n');
    } else if (ch >= ' ' || ch === '\t') {
      line += ch;
      term.write(ch);
    }
  }
});

$('restart').addEventListener('click', () => { if (ws && ws.readyState === WebSocket.OPEN) startStream(); term.focus(); });
$('disconnect').addEventListener('click', () => { if (ws) ws.close(1000, 'closed by the user'); });
for (const id of ['mode-line', 'mode-raw']) $(id).addEventListener('change', () => { line = ''; term.focus(); });
counts();
connect();
