// The relay console: polls /console/api/tunnels every second, draws each tunnel's byte rates,
// and calls the tunnel API (/tunnels) to open, rotate and close. Every call carries the
// header x-splice-console, which the relay requires with the session cookie (CSRF).
'use strict';

const HEADERS = { 'content-type': 'application/json', 'x-splice-console': '1' };
const POLL_MS = 1000;
const HISTORY = 60;
const $ = (id) => document.getElementById(id);
const history = new Map(); // tunnelId -> [{t, up, down}]
let agentPort = null;

async function call(method, path, body) {
  const r = await fetch(path, { method, headers: HEADERS, body: body ? JSON.stringify(body) : undefined });
  if (r.status === 401) {
    location.replace('/console/login');
    throw new Error('not logged in');
  }
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(json.message || ('HTTP ' + r.status));
  return json;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + ' ' + units[i];
}

function relayUrl() {
  const v = $('relay-url').value.trim().replace(/\/+$/, '');
  if (v) return v;
  return agentPort ? 'https://' + location.hostname + ':' + agentPort : '';
}

// Byte rates from the history: one point per poll, bytes per second in each direction.
function draw(canvas, points) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 180, h = canvas.clientHeight || 44;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  g.strokeStyle = '#e4e7ec';
  g.strokeRect(0.5, 0.5, w - 1, h - 1);
  const rates = [];
  for (let i = 1; i < points.length; i++) {
    const dt = Math.max((points[i].t - points[i - 1].t) / 1000, 0.001);
    rates.push({ up: Math.max(points[i].up - points[i - 1].up, 0) / dt,
      down: Math.max(points[i].down - points[i - 1].down, 0) / dt });
  }
  const max = Math.max(1, ...rates.map((r) => Math.max(r.up, r.down)));
  const x = (i) => w - 2 - (rates.length - 1 - i) * ((w - 4) / (HISTORY - 1));
  const y = (v) => h - 3 - (v / max) * (h - 12);
  for (const [key, color] of [['up', '#2457c5'], ['down', '#1b7f3b']]) {
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    rates.forEach((r, i) => (i ? g.lineTo(x(i), y(r[key])) : g.moveTo(x(i), y(r[key]))));
    g.stroke();
  }
  g.fillStyle = '#667085'; g.font = '10px system-ui';
  g.fillText('peak ' + bytes(max) + '/s', 4, 10);
  canvas.dataset.points = String(rates.length);
}

function peer(p) {
  const s = (p && p.status) || 'DISCONNECTED';
  return el('span', { class: 'state ' + s }, s.toLowerCase());
}

// One row per tunnel, kept across polls (a button under the pointer stays the same button);
// each poll refills its cells.
const rows = new Map(); // tunnelId -> {row, cells, canvas, rotate, close}
function rowFor(id) {
  let r = rows.get(id);
  if (r) return r;
  const cells = {};
  for (const k of ['id', 'status', 'source', 'destination', 'services', 'thing', 'pairing', 'bytes', 'chart', 'actions']) {
    cells[k] = el('td', { class: k });
  }
  cells.id.classList.add('mono');
  cells.services.classList.add('mono');
  cells.pairing.classList.add('mono');
  cells.bytes.classList.add('mono');
  const canvas = el('canvas', { class: 'chart', width: '180', height: '44' });
  cells.chart.append(canvas);
  const rotate = el('button', { class: 'rotate', onclick: () => showRotate(r.tunnel) }, 'Rotate');
  const close = el('button', { class: 'close danger', onclick: () => closeTunnel(r.tunnel) }, 'Close');
  cells.actions.append(el('div', { class: 'actions' }, rotate, close));
  const row = el('tr', { 'data-tunnel': id }, ...Object.values(cells));
  r = { row, cells, canvas, rotate, close, tunnel: null };
  rows.set(id, r);
  return r;
}

function render(list) {
  const tbody = $('tunnels').querySelector('tbody');
  const now = Date.now();
  const seen = new Set();
  for (const t of list) {
    seen.add(t.tunnelId);
    const b = t.bytes || { sourceToDestination: 0, destinationToSource: 0 };
    const h = history.get(t.tunnelId) || [];
    h.push({ t: now, up: b.sourceToDestination, down: b.destinationToSource });
    while (h.length > HISTORY) h.shift();
    history.set(t.tunnelId, h);
    const open = t.status === 'OPEN';
    const pairing = t.pairing ? t.pairing.kind + (t.pairing.identity ? ': ' + t.pairing.identity : '') : 'token';
    const r = rowFor(t.tunnelId);
    r.tunnel = t;
    r.row.dataset.status = t.status;
    const c = r.cells;
    c.id.title = t.tunnelId;
    c.id.replaceChildren(t.tunnelId.slice(0, 8), t.description ? el('div', { class: 'note' }, t.description) : '');
    c.status.replaceChildren(el('span', { class: 'state ' + t.status }, t.status.toLowerCase()));
    c.source.replaceChildren(peer(t.sourceConnectionState));
    c.destination.replaceChildren(peer(t.destinationConnectionState));
    c.services.textContent = ((t.destinationConfig || {}).services || []).join(', ');
    c.thing.textContent = (t.destinationConfig || {}).thingName || '';
    c.pairing.textContent = pairing;
    c.bytes.replaceChildren(el('span', { class: 'legend up' }, bytes(b.sourceToDestination)), ' / ',
      el('span', { class: 'legend down' }, bytes(b.destinationToSource)));
    r.rotate.disabled = !open;
    r.close.disabled = !open;
    draw(r.canvas, h);
  }
  for (const id of [...rows.keys()]) {
    if (!seen.has(id)) { rows.get(id).row.remove(); rows.delete(id); history.delete(id); }
  }
  // Reorder only when the order changed (moving a row would move the button under the pointer).
  const order = list.map((t) => rows.get(t.tunnelId).row);
  if (order.some((row, i) => tbody.children[i] !== row) || tbody.children.length !== order.length) {
    tbody.replaceChildren(...order);
  }
  $('count').textContent = list.length + ' tunnel(s); updated ' + new Date().toLocaleTimeString();
}

async function poll() {
  try {
    const r = await call('GET', '/console/api/tunnels');
    agentPort = r.agentPort;
    if (!$('relay-url').value && !$('relay-url').placeholder) $('relay-url').placeholder = relayUrl();
    $('auth').replaceChildren(r.login
      ? 'Logged in (session cookie)'
      : el('span', { class: 'warn' }, 'No login: this relay\'s API has no --api-token-file, so anyone who can reach this port can use this console. Keep --api on loopback.'));
    $('logout').hidden = !r.login;
    const list = r.tunnels.slice().sort((a, b) => (a.status === b.status ? b.createdAt - a.createdAt : a.status === 'OPEN' ? -1 : 1));
    render(list);
    $('error').textContent = '';
  } catch (e) {
    $('error').textContent = 'polling the relay: ' + e.message;
  }
}

function copyButton(text) {
  return el('button', { type: 'button', class: 'copy', onclick: async (e) => {
    try { await navigator.clipboard.writeText(text); e.target.textContent = 'Copied'; }
    catch (err) { e.target.textContent = 'Select and copy'; }
  } }, 'Copy');
}

// The tokens an open or rotate answered with, once; and for a source token, a link per
// service to the browser source (the token in the URL's fragment, which is never sent).
function showTokens(title, answer, services) {
  $('tokens-title').textContent = title;
  $('tokens-id').textContent = answer.tunnelId;
  const box = $('tokens');
  box.replaceChildren();
  for (const [key, label] of [['sourceAccessToken', 'Source token'], ['destinationAccessToken', 'Destination token']]) {
    if (!answer[key]) continue;
    box.append(el('div', { class: 'token' }, el('strong', {}, label), el('code', { id: 'token-' + key }, answer[key]), copyButton(answer[key])));
  }
  const sources = $('sources');
  sources.replaceChildren();
  if (answer.sourceAccessToken) {
    const base = relayUrl();
    if (!base) {
      sources.append(el('p', { class: 'note' }, 'Set "Browser source at" to the relay\'s https://HOST:PORT for a browser source link.'));
    } else {
      sources.append(el('p', {}, 'Browser source (uses the source token; it works once): '));
      for (const s of services) {
        const frag = 'tunnel=' + encodeURIComponent(answer.tunnelId) + '&service=' + encodeURIComponent(s) +
          '&token=' + encodeURIComponent(answer.sourceAccessToken);
        sources.append(el('a', { class: 'button primary source-link', 'data-service': s, href: base + '/source#' + frag,
          target: '_blank', rel: 'noopener noreferrer' }, 'Open browser source: ' + s), ' ');
      }
    }
  }
  $('tokens-dialog').showModal();
}

async function openTunnel(e) {
  e.preventDefault();
  const services = $('open-services').value.split(',').map((s) => s.trim()).filter(Boolean);
  const body = { destinationConfig: { services } };
  const thing = $('open-thing').value.trim();
  if (thing) body.destinationConfig.thingName = thing;
  const minutes = Number($('open-minutes').value);
  if (minutes) body.timeoutConfig = { maxLifetimeTimeoutMinutes: minutes };
  const description = $('open-description').value.trim();
  if (description) body.description = description;
  try {
    const r = await call('POST', '/tunnels', body);
    $('open-dialog').close();
    showTokens('Tunnel opened', r, services);
    poll();
  } catch (err) {
    $('error').textContent = 'open: ' + err.message;
    $('open-dialog').close();
  }
}

let rotating = null;
function showRotate(t) {
  rotating = t;
  $('rotate-id').textContent = t.tunnelId;
  $('rotate-client').value = '';
  $('rotate-dialog').showModal();
}

async function rotate(e) {
  e.preventDefault();
  const t = rotating;
  const body = { clientMode: $('rotate-side').value };
  const client = $('rotate-client').value.trim();
  if (client) body.clientToken = client;
  try {
    const r = await call('POST', '/tunnels/' + encodeURIComponent(t.tunnelId) + '/rotate', body);
    $('rotate-dialog').close();
    showTokens('Tokens rotated', r, (t.destinationConfig || {}).services || []);
    poll();
  } catch (err) {
    $('rotate-dialog').close();
    $('error').textContent = 'rotate: ' + err.message;
  }
}

async function closeTunnel(t) {
  if (!confirm('Close tunnel ' + t.tunnelId + '? Its peers are disconnected and its tokens stop working.')) return;
  try {
    await call('POST', '/tunnels/' + encodeURIComponent(t.tunnelId) + '/close', {});
    poll();
  } catch (err) {
    $('error').textContent = 'close: ' + err.message;
  }
}

$('open').addEventListener('click', () => $('open-dialog').showModal());
$('open-cancel').addEventListener('click', () => $('open-dialog').close());
$('open-form').addEventListener('submit', openTunnel);
$('rotate-cancel').addEventListener('click', () => $('rotate-dialog').close());
$('rotate-form').addEventListener('submit', rotate);
$('tokens-close').addEventListener('click', () => {
  $('tokens').replaceChildren();
  $('sources').replaceChildren();
  $('tokens-dialog').close();
});
$('relay-url').value = localStorage.getItem('splice-relay-url') || '';
$('relay-url').addEventListener('change', () => localStorage.setItem('splice-relay-url', $('relay-url').value.trim()));
$('logout').addEventListener('click', async () => {
  await fetch('/console/logout', { method: 'POST', headers: HEADERS });
  location.replace('/console/login');
});
poll();
setInterval(poll, POLL_MS);
