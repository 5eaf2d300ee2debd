// The console's login: POSTs the API token; the relay answers with the session cookie.
'use strict';
document.getElementById('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const message = document.getElementById('message');
  message.textContent = 'checking...';
  try {
    const r = await fetch('/console/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-splice-console': '1' },
      body: JSON.stringify({ token: document.getElementById('token').value }),
    });
    if (r.ok) {
      location.replace('/console');
      return;
    }
    message.textContent = (await r.json()).message || ('HTTP ' + r.status);
  } catch (err) {
    message.textContent = 'the relay did not answer: ' + err;
  }
});
