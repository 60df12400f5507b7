// tl-gateway page: the Keys tab (clients and keys issued at runtime). Plain DOM, no framework.
//
// Kept beside app.js, which owns sign-in, the tabs and the polling, and lends this script what it
// shares of the page (window.tlgwPage: the API client, DOM helpers, state, messages). Admins see
// every client and key, create clients, issue (shown once, with a copy button and the SDK line),
// revoke and disable, each destructive action confirmed; members see and rotate their own keys.
// Every value is set as text; a new key lives only in the DOM until "Done".
'use strict';

(function () {
  const { api, h, txt, absTime, ui, state, setBusy, clearAlert, showAlert, notify, sessionRefused, ApiError } =
    window.tlgwPage;

  // A client id as a path segment: ids are plain (A-Z a-z 0-9 . _ - @ +), sent as they are
  // (the gateway refuses percent-escapes in paths).
  function clientPath(id) {
    if (!/^[A-Za-z0-9._@+-]{1,128}$/.test(id)) throw new ApiError(0, null, `Not a client id: ${id}`, null);
    return id;
  }

  function labelPath(label) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(label)) throw new ApiError(0, null, `Not a key label: ${label}`, null);
    return label;
  }

  function keyCells(k) {
    return [
      h('td', { text: txt(k.label) }),
      h('td', { text: txt(k.created_by) }),
      h('td', { text: k.expires ? absTime(k.expires) : 'never' }),
      h('td', { text: k.last_used ? absTime(k.last_used) : 'never' }),
      h('td', {}, h('span', { class: `badge ${txt(k.state)}`, 'data-testid': 'key-state', text: txt(k.state) })),
    ];
  }

  function smallButton(text, testid, onClick) {
    const b = h('button', { type: 'button', class: 'small', 'data-testid': testid, text });
    b.addEventListener('click', onClick);
    return b;
  }

  async function loadKeys(gen) {
    if (!state.me) return;
    try {
      if (state.me.can_manage_keys === true) {
        const body = await api('clients');
        if (gen !== state.gen) return;
        renderClients(body && Array.isArray(body.clients) ? body.clients : []);
      } else {
        const me = await api('me');
        if (gen !== state.gen) return;
        if (typeof me.csrf_token === 'string') state.csrf = me.csrf_token;
        renderMyKeys(Array.isArray(me.keys) ? me.keys : []);
      }
      clearAlert('keys');
    } catch (e) {
      if (gen !== state.gen) return;
      if (e.status === 401) {
        sessionRefused(e);
        return;
      }
      if (state.alertSource !== 'action') showAlert(e, 'keys');
    }
  }

  function renderClients(clients) {
    ui.keysAdmin.hidden = false;
    ui.keysMine.hidden = true;
    const rows = [];
    for (const c of clients) {
      const id = txt(c.id);
      const fromStore = c.source !== 'config';
      const clientActions = h('div', { class: 'buttons' });
      if (fromStore) {
        clientActions.append(smallButton('Issue key', 'issue-key', () => issueKey(c.id)));
        if (c.disabled !== true) {
          clientActions.append(smallButton('Disable client', 'disable-client', () => disableClient(c.id)));
        }
      }
      rows.push(h('tr', { 'data-client': id, class: 'client-row' }, [
        h('th', { scope: 'row', colspan: '6' }, [
          h('span', { text: id }),
          h('span', { class: 'muted', text: ` — ${(c.roles || []).map(txt).join(', ') || 'no roles'}; ${fromStore ? 'store' : 'configuration file'}${c.disabled === true ? '; disabled' : ''}` }),
        ]),
        h('td', {}, clientActions),
      ]));
      for (const k of Array.isArray(c.keys) ? c.keys : []) {
        const actions = h('div', { class: 'buttons' });
        if (fromStore && k.state === 'active') {
          actions.append(smallButton('Revoke', 'revoke-key', () => revokeKey(c.id, k.label)));
        }
        rows.push(h('tr', { 'data-client': id, 'data-label': txt(k.label), class: 'key-row' }, [
          h('td', { text: '' }), ...keyCells(k), h('td', {}, actions),
        ]));
      }
    }
    ui.clientsBody.replaceChildren(...rows);
  }

  function renderMyKeys(keys) {
    ui.keysAdmin.hidden = true;
    ui.keysMine.hidden = false;
    ui.myKeysEmpty.hidden = keys.length > 0;
    ui.myKeysBody.replaceChildren(...keys.map((k) => {
      const actions = h('div', { class: 'buttons' });
      if (k.state === 'active') {
        actions.append(smallButton('Rotate', 'rotate-key', () => rotateKey(k.label)));
      }
      return h('tr', { 'data-label': txt(k.label) }, [...keyCells(k), h('td', {}, actions)]);
    }));
  }

  function showNewKey(client, answer) {
    const base = new URL('../../', location.href).href.replace(/\/$/, '');
    ui.newKeyClient.textContent = txt(client);
    ui.newKeyLabel.textContent = txt(answer.label);
    ui.newKeyValue.textContent = txt(answer.key);
    ui.newKeySdk.textContent = `from twelvelabs import TwelveLabs\nclient = TwelveLabs(api_key="${txt(answer.key)}", base_url="${base}/v1.3")`;
    ui.newKey.hidden = false;
    ui.newKeyCopy.focus();
  }

  function hideNewKey() {
    ui.newKeyValue.textContent = '';
    ui.newKeySdk.textContent = '';
    ui.newKey.hidden = true;
  }

  async function keyAction(work, done) {
    if (state.busy) return;
    setBusy(true);
    clearAlert();
    try {
      const answer = await work();
      if (done) done(answer);
    } catch (e) {
      showAlert(e, 'action');
    } finally {
      setBusy(false);
    }
    await loadKeys(state.gen);
  }

  function createClient() {
    const id = ui.newClientId.value.trim();
    const roles = ui.newClientRoles.value.split(',').map((r) => r.trim()).filter(Boolean);
    keyAction(() => api('clients', { method: 'POST', body: { id, roles } }), () => {
      ui.newClientId.value = '';
      notify(`Client ${id} created.`);
    });
  }

  function issueKey(client) {
    keyAction(() => api(`clients/${clientPath(client)}/keys`, { method: 'POST', body: {} }),
      (answer) => showNewKey(client, answer));
  }

  function revokeKey(client, label) {
    if (!window.confirm(`Revoke key "${label}" of ${client}? Every program using it is refused at once.`)) return;
    keyAction(() => api(`clients/${clientPath(client)}/keys/${labelPath(label)}`, { method: 'DELETE' }),
      () => notify(`Key ${label} of ${client} revoked.`));
  }

  function disableClient(client) {
    if (!window.confirm(`Disable client ${client}? All of its keys are refused until it is enabled again.`)) return;
    keyAction(() => api(`clients/${clientPath(client)}`, { method: 'PATCH', body: { disabled: true } }),
      () => notify(`Client ${client} disabled.`));
  }

  function rotateKey(label) {
    if (!window.confirm(`Rotate key "${label}"? A new key is issued; the old one stops working after a day.`)) return;
    keyAction(() => api('me/keys', { method: 'POST', body: { replaces: label } }),
      (answer) => showNewKey(state.me.client, answer));
  }

  // ---------- wiring ----------

  ui.createClientForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    createClient();
  });
  ui.newKeyDone.addEventListener('click', hideNewKey);
  ui.newKeyCopy.addEventListener('click', () => {
    const value = ui.newKeyValue.textContent;
    if (navigator.clipboard && value) {
      navigator.clipboard.writeText(value).then(() => notify('Key copied.'), () => notify('Copy failed: select the key and copy it.'));
    }
  });

  window.tlgwKeys = Object.freeze({ load: loadKeys, hideNewKey });
})();
