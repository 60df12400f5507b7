// tl-gateway console: approvals, recent destructive calls, keys. Plain DOM, no framework, no
// build step.
//
// Served under a strict Content-Security-Policy (no inline script or style, no eval), so every
// element is built with createElement and every value from the API is set as textContent.
// Two ways to sign in (sign-in.json says which are on): with the team's identity provider (a
// server-side session behind an HttpOnly cookie; state-changing calls carry the session's CSRF
// token from GET /tl-gateway/v1/me in x-tl-gateway-csrf), or with a personal key, which lives in
// sessionStorage only (key 'tlgw.key') and is sent as x-api-key. Nothing goes to localStorage,
// and no secret into a URL.
'use strict';

(function () {
  const STORAGE_KEY = 'tlgw.key';
  const API_BASE = new URL('../v1/', location.href);
  const POLL_MS = 3000;
  const AUDIT_LIMIT = 50;

  const $ = (id) => document.getElementById(id);

  const ui = {
    sso: $('sso'),
    keyHint: $('key-hint'),
    noRights: $('no-rights'),
    newKey: $('new-key'),
    newKeyClient: $('new-key-client'),
    newKeyLabel: $('new-key-label'),
    newKeyValue: $('new-key-value'),
    newKeyCopy: $('new-key-copy'),
    newKeySdk: $('new-key-sdk'),
    newKeyDone: $('new-key-done'),
    keysAdmin: $('keys-admin'),
    keysMine: $('keys-mine'),
    createClientForm: $('create-client-form'),
    newClientId: $('new-client-id'),
    newClientRoles: $('new-client-roles'),
    clientsBody: $('clients-body'),
    myKeysBody: $('my-keys-body'),
    myKeysEmpty: $('my-keys-empty'),
    who: $('who'),
    whoami: $('whoami'),
    signOut: $('sign-out'),
    alert: $('alert'),
    notice: $('notice'),
    signin: $('signin'),
    signinForm: $('signin-form'),
    keyInput: $('key-input'),
    signInBtn: $('sign-in'),
    app: $('app'),
    tabs: {
      pending: $('tab-pending'),
      decided: $('tab-decided'),
      scheduled: $('tab-scheduled'), // its content: deferred.js
      audit: $('tab-audit'),
      keys: $('tab-keys'),
    },
    panels: {
      pending: $('panel-pending'),
      decided: $('panel-decided'),
      scheduled: $('panel-scheduled'),
      audit: $('panel-audit'),
      keys: $('panel-keys'),
    },
    pendingCount: $('pending-count'),
    decidedCount: $('decided-count'),
    pendingList: $('pending-list'),
    pendingEmpty: $('pending-empty'),
    decidedList: $('decided-list'),
    decidedEmpty: $('decided-empty'),
    detail: $('detail'),
    detailTitle: $('detail-title'),
    detailBody: $('detail-body'),
    detailClose: $('detail-close'),
    actions: $('detail-actions'),
    comment: $('comment'),
    approve: $('approve'),
    deny: $('deny'),
    cancel: $('cancel'),
    auditBody: $('audit-body'),
    auditError: $('audit-error'),
  };

  const state = {
    me: null,
    session: false, // signed in with the identity provider (cookie), not a key
    csrf: null, // the session's CSRF token (memory only)
    signInOptions: { oidc: false, key_sign_in: true },
    timer: null,
    gen: 0, // bumped on sign-in/out so late responses of an old session are dropped
    tab: 'pending',
    approvals: [],
    openId: null,
    open: null, // the open approval, as last seen
    busy: false,
    inflight: false,
    queued: false,
    alertSource: null,
    sig: { pending: null, decided: null, detail: null, audit: null },
  };

  // ---------- small helpers: dom.js ----------

  const {
    h, txt, pad, parseTime, absTime, span, ago, createdText, expiresText, timeEl, STATE_WORDS, stateBadge, decisionWord, byNewest,
  } = window.tlgwDom;

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, code, message, requestId) {
      super(message);
      this.status = status;
      this.code = code || null;
      this.requestId = requestId || null;
    }
  }

  async function api(path, opts) {
    const o = opts || {};
    const key = o.key !== undefined ? o.key : sessionStorage.getItem(STORAGE_KEY);
    const method = o.method || 'GET';
    const init = {
      method,
      headers: { accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    };
    if (key) {
      init.headers['x-api-key'] = key;
    } else {
      // The session cookie (HttpOnly) goes along; a change carries the CSRF token.
      init.credentials = 'same-origin';
      if (method !== 'GET' && state.csrf) init.headers['x-tl-gateway-csrf'] = state.csrf;
    }
    if (o.body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(o.body);
    }
    let resp;
    try {
      resp = await fetch(new URL(path, API_BASE), init);
    } catch (_) {
      throw new ApiError(0, 'network_error', 'The gateway could not be reached.', null);
    }
    const text = await resp.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    if (!resp.ok) {
      const b = body && typeof body === 'object' ? body : {};
      const message = typeof b.message === 'string' && b.message
        ? b.message
        : `The gateway answered HTTP ${resp.status}.`;
      throw new ApiError(resp.status,
        typeof b.code === 'string' ? b.code : null,
        message,
        typeof b.request_id === 'string' ? b.request_id : null);
    }
    return body;
  }

  const enc = encodeURIComponent;

  // ---------- messages ----------

  function showAlert(err, source) {
    const parts = [h('span', { class: 'alert-message', text: err.message || String(err) })];
    const extra = [];
    if (err.status) extra.push(`HTTP ${err.status}`);
    if (err.code) extra.push(err.code);
    if (err.requestId) extra.push(`request id ${err.requestId}`);
    if (extra.length) parts.push(h('span', { class: 'alert-extra', text: ` (${extra.join(', ')})` }));
    ui.alert.replaceChildren(h('strong', { text: 'Error: ' }), ...parts);
    state.alertSource = source;
  }

  // Clears the alert; with a source, only if that source raised it.
  function clearAlert(source) {
    if (source && state.alertSource !== source) return;
    ui.alert.replaceChildren();
    state.alertSource = null;
  }

  function notify(message) {
    ui.notice.textContent = message;
  }

  // ---------- sign-in / sign-out ----------

  async function signIn(key) {
    clearAlert();
    notify('');
    if (!key) {
      showAlert(new ApiError(0, null, 'Paste your personal key first.', null), 'action');
      ui.keyInput.focus();
      return;
    }
    ui.signInBtn.disabled = true;
    try {
      const me = await api('me', { key });
      sessionStorage.setItem(STORAGE_KEY, key);
      ui.keyInput.value = '';
      enterApp(me);
    } catch (e) {
      showAlert(e, 'action');
      ui.keyInput.focus();
      ui.keyInput.select();
    } finally {
      ui.signInBtn.disabled = false;
    }
  }

  function enterApp(me) {
    state.gen += 1;
    state.me = me || {};
    state.session = state.me.auth === 'oidc';
    state.csrf = typeof state.me.csrf_token === 'string' ? state.me.csrf_token : null;
    ui.noRights.hidden = !(Array.isArray(state.me.roles) && state.me.roles.length === 0);
    const roles = Array.isArray(state.me.roles) && state.me.roles.length
      ? ` (${state.me.roles.map(txt).join(', ')})`
      : '';
    ui.whoami.textContent = `Signed in as ${txt(state.me.client)}${roles}`;
    ui.who.hidden = false;
    ui.signin.hidden = true;
    ui.app.hidden = false;
    ui.tabs.audit.hidden = state.me.can_read_audit !== true;
    window.tlgwKeys.hideNewKey();
    selectTab('pending', false);
    refresh();
    if (state.timer) clearInterval(state.timer);
    state.timer = setInterval(refresh, POLL_MS);
    ui.tabs.pending.focus();
    // A link from a notification (#/approvals/ID) opens that approval.
    const linked = /^#\/approvals\/([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
    if (linked) openDetail(linked[1]);
  }

  function resetView() {
    state.approvals = [];
    state.openId = null;
    state.open = null;
    state.sig = { pending: null, decided: null, detail: null, audit: null };
    ui.pendingList.replaceChildren();
    ui.decidedList.replaceChildren();
    ui.auditBody.replaceChildren();
    ui.auditError.hidden = true;
    ui.pendingEmpty.hidden = true;
    ui.decidedEmpty.hidden = true;
    ui.pendingCount.textContent = '';
    ui.decidedCount.textContent = '';
    ui.detailBody.replaceChildren();
    ui.detail.hidden = true;
    ui.actions.hidden = true;
    ui.comment.value = '';
  }

  function signOut() {
    state.gen += 1;
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
    sessionStorage.removeItem(STORAGE_KEY);
    if (state.session) {
      // Ends the server-side session; the cookie is cleared by the answer.
      const headers = state.csrf ? { 'x-tl-gateway-csrf': state.csrf } : {};
      fetch(new URL('logout', location.href), {
        method: 'POST', headers, credentials: 'same-origin', cache: 'no-store',
      }).catch(() => {});
    }
    state.session = false;
    state.csrf = null;
    state.me = null;
    window.tlgwKeys.hideNewKey();
    ui.noRights.hidden = true;
    resetView();
    ui.whoami.textContent = '';
    ui.who.hidden = true;
    ui.app.hidden = true;
    ui.keyInput.value = '';
    clearAlert();
    notify('');
    showSignIn();
  }

  // A 401 while signed in: the key was revoked or changed.
  function sessionRefused(err) {
    signOut();
    showAlert(err, 'action');
  }

  // ---------- tabs ----------

  function visibleTabs() {
    return ['pending', 'decided', 'audit', 'scheduled', 'keys'].filter((t) => !ui.tabs[t].hidden);
  }

  function selectTab(name, focus) {
    state.tab = name;
    for (const t of Object.keys(ui.tabs)) {
      const on = t === name;
      ui.tabs[t].setAttribute('aria-selected', on ? 'true' : 'false');
      ui.tabs[t].tabIndex = on ? 0 : -1;
      ui.panels[t].hidden = !on;
    }
    if (focus) ui.tabs[name].focus();
    if (name === 'audit') loadAudit(state.gen);
    if (name === 'keys') loadKeys(state.gen);
  }

  function onTabKey(ev) {
    const tabs = visibleTabs();
    const i = tabs.indexOf(state.tab);
    let next = null;
    if (ev.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
    else if (ev.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
    else if (ev.key === 'Home') next = tabs[0];
    else if (ev.key === 'End') next = tabs[tabs.length - 1];
    if (next) {
      ev.preventDefault();
      selectTab(next, true);
    }
  }

  // ---------- polling ----------

  async function refresh() {
    if (!state.me) return;
    if (state.inflight) {
      state.queued = true;
      return;
    }
    state.inflight = true;
    const gen = state.gen;
    try {
      const body = await api('approvals');
      if (gen !== state.gen) return;
      const list = body && Array.isArray(body.approvals) ? body.approvals : [];
      state.approvals = byNewest(list);
      renderPending();
      renderDecided();
      if (state.openId) await refreshDetail(gen);
      clearAlert('poll');
    } catch (e) {
      if (gen !== state.gen) return;
      if (e.status === 401) {
        sessionRefused(e);
        return;
      }
      if (state.alertSource !== 'action') showAlert(e, 'poll');
    } finally {
      state.inflight = false;
    }
    if (gen === state.gen && state.tab === 'audit') await loadAudit(gen);
    if (gen === state.gen && state.tab === 'keys' && !state.busy) await loadKeys(gen);
    if (state.queued && gen === state.gen) {
      state.queued = false;
      refresh();
    }
  }

  // ---------- pending list ----------

  function pendingRowParts(a) {
    const mine = state.me && a.requester === state.me.client;
    const tags = [];
    if (a.can_decide) tags.push('needs your decision');
    if (mine) tags.push('your request');
    return {
      request: `${txt(a.method)} ${txt(a.target)}`,
      who: `requested by ${txt(a.requester)} · rule ${txt(a.rule)}`,
      times: `${createdText(a)} · ${expiresText(a)}`,
      tags,
    };
  }

  function renderPending() {
    const pending = state.approvals.filter((a) => a.state === 'pending');
    ui.pendingCount.textContent = `(${pending.length})`;
    ui.pendingEmpty.hidden = pending.length > 0;
    const rows = pending.map((a) => ({ id: String(a.id), parts: pendingRowParts(a) }));
    const sig = JSON.stringify([rows, state.openId]);
    if (sig === state.sig.pending) return;
    state.sig.pending = sig;

    const focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.approvalId
      : undefined;
    const items = rows.map(({ id, parts }) => {
      const open = id === state.openId;
      const btn = h('button', {
        type: 'button',
        class: 'row',
        'data-testid': `approval-${id}`,
        'data-approval-id': id,
        'aria-controls': 'detail',
        'aria-current': open ? 'true' : null,
      }, [
        h('span', { class: 'row-request' }, [
          open ? h('span', { class: 'open-mark', text: 'Open: ' }) : null,
          h('code', { text: parts.request }),
        ]),
        h('span', { class: 'row-meta', text: parts.who }),
        h('span', { class: 'row-meta', text: parts.times }),
        parts.tags.length
          ? h('span', { class: 'row-tags' }, parts.tags.map((t) => h('span', { class: 'tag', text: t })))
          : null,
      ]);
      btn.addEventListener('click', () => openDetail(id));
      return h('li', null, btn);
    });
    ui.pendingList.replaceChildren(...items);
    if (focusedId !== undefined) {
      const again = ui.pendingList.querySelector(`[data-approval-id="${CSS.escape(focusedId)}"]`);
      if (again) again.focus();
    }
  }

  // ---------- detail ----------

  function openDetail(id) {
    const a = state.approvals.find((x) => String(x.id) === id);
    if (state.openId !== id) ui.comment.value = '';
    state.openId = id;
    state.open = a || null;
    state.sig.detail = null;
    clearAlert('action');
    notify('');
    ui.detail.hidden = false;
    if (a) renderDetail(a);
    else refreshDetail(state.gen);
    renderPending();
    ui.detailTitle.focus();
  }

  function closeDetail() {
    const id = state.openId;
    state.openId = null;
    state.open = null;
    state.sig.detail = null;
    ui.detail.hidden = true;
    ui.detailBody.replaceChildren();
    ui.actions.hidden = true;
    ui.comment.value = '';
    renderPending();
    if (id !== null) {
      const row = ui.pendingList.querySelector(`[data-approval-id="${CSS.escape(id)}"]`);
      if (row) row.focus();
      else ui.tabs.pending.focus();
    }
  }

  async function refreshDetail(gen) {
    const id = state.openId;
    if (!id) return;
    let a = state.approvals.find((x) => String(x.id) === id);
    if (!a) {
      try {
        a = await api(`approvals/${enc(id)}`);
      } catch (e) {
        if (gen !== state.gen || state.openId !== id) return;
        if (e.status === 404) {
          state.open = null;
          state.sig.detail = null;
          ui.detailTitle.textContent = `Approval ${id}`;
          ui.detailBody.replaceChildren(h('p', { class: 'empty', text: 'This approval no longer exists.' }));
          ui.actions.hidden = true;
          return;
        }
        throw e;
      }
    }
    if (gen !== state.gen || state.openId !== id) return;
    state.open = a;
    renderDetail(a);
  }

  function referencesSection(refs) {
    const box = h('div', { class: 'references', 'data-testid': 'references' });
    if (refs === null || refs === undefined || typeof refs !== 'object') {
      box.append(h('p', { class: 'note', text: 'no lookup: the gateway did not look up what this delete would unlink.' }));
      return box;
    }
    const assets = Array.isArray(refs.indexed_assets) ? refs.indexed_assets : [];
    const entities = Array.isArray(refs.entities) ? refs.entities : [];
    if (refs.complete === false) {
      box.append(h('p', { class: 'warn', 'data-testid': 'references-incomplete' }, [
        h('strong', { text: 'lookup incomplete: ' }),
        'the lookup stopped early, so there may be more references than listed here.',
      ]));
    }
    if (assets.length === 0 && entities.length === 0) {
      box.append(h('p', { class: 'note', text: 'no references: nothing indexed or linked refers to this asset.' }));
      return box;
    }
    box.append(h('h4', { text: `Indexed assets (${assets.length})` }));
    if (assets.length) {
      box.append(h('ul', { class: 'ref-list', 'data-testid': 'references-indexed-assets' }, assets.map((r) => {
        const hasName = r && r.index_name !== null && r.index_name !== undefined && r.index_name !== '';
        return h('li', null, [
          h('span', { class: 'ref-name', text: hasName ? txt(r.index_name) : `index ${txt(r && r.index_id)}` }),
          h('span', { class: 'ref-meta', text: hasName
            ? ` (index ${txt(r.index_id)}; indexed asset ${txt(r.id)})`
            : ` (indexed asset ${txt(r && r.id)})` }),
        ]);
      })));
    } else {
      box.append(h('p', { class: 'note', text: 'none' }));
    }
    box.append(h('h4', { text: `Entities (${entities.length})` }));
    if (entities.length) {
      box.append(h('ul', { class: 'ref-list', 'data-testid': 'references-entities' }, entities.map((r) => h('li', null, [
        h('span', { class: 'ref-name', text: `entity ${txt(r && r.id)}` }),
        h('span', { class: 'ref-meta', text: ` (collection ${txt(r && r.collection_id)})` }),
      ]))));
    } else {
      box.append(h('p', { class: 'note', text: 'none' }));
    }
    return box;
  }

  function decisionsList(decisions, testid) {
    return h('ul', { class: 'decisions', 'data-testid': testid }, decisions.map((d) => h('li', null, [
      h('strong', { text: txt(d && d.client) }),
      ` ${decisionWord(d && d.decision)} `,
      d && d.at ? h('span', null, ['at ', timeEl(d.at, false)]) : null,
      d && d.comment ? h('span', { class: 'comment-text' }, [': “', h('span', { text: String(d.comment) }), '”']) : null,
    ])));
  }

  function row(label, value) {
    return [h('dt', { text: label }), h('dd', null, value)];
  }

  function renderDetail(a) {
    const decisions = Array.isArray(a.decisions) ? a.decisions : [];
    // Skip the rebuild when nothing visible changed (keeps selection and scroll).
    const sig = JSON.stringify([a, createdText(a), expiresText(a)]);
    const same = sig === state.sig.detail;
    state.sig.detail = sig;

    if (!same) {
      ui.detailTitle.textContent = `Approval ${txt(a.id)}`;
      const dl = h('dl', { class: 'facts' }, [
        ...row('State', stateBadge(a.state)),
        ...row('Requester', txt(a.requester)),
        ...row('Request', h('code', { text: `${txt(a.method)} ${txt(a.target)}` })),
        ...row('Rule', txt(a.rule)),
        ...row('Created', [timeEl(a.created_at, false), ` (${createdText(a)})`]),
        ...row(a.state === 'approved' ? 'Re-send by' : 'Deadline',
          [timeEl(a.expires_at, false), ` (${expiresText(a)})`]),
        ...row('Approvals required', `${txt(a.approvals_required)} from ${
          Array.isArray(a.approver_roles) && a.approver_roles.length ? a.approver_roles.map(txt).join(' or ') : '—'}`),
        a.used_at ? row('Used', timeEl(a.used_at, true)) : [],
      ].flat());

      const parts = [dl];
      if (a.message !== null && a.message !== undefined && a.message !== '') {
        parts.push(h('div', { class: 'rule-message' }, [
          h('h3', { text: 'Why approval is needed' }),
          h('p', { 'data-testid': 'rule-message', text: String(a.message) }),
        ]));
      }
      if (typeof a.body === 'string') {
        // The approval covers this exact body: shown as text, never interpreted.
        parts.push(h('h3', { text: 'Request body (approved exactly as shown)' }));
        parts.push(h('pre', { class: 'request-body', 'data-testid': 'request-body', text: a.body }));
      }
      parts.push(h('h3', { text: 'Blast radius: what this delete unlinks' }));
      parts.push(referencesSection(a.references));
      if (decisions.length) {
        parts.push(h('h3', { text: 'Decisions so far' }));
        parts.push(decisionsList(decisions, 'detail-decisions'));
      }
      if (a.state !== 'pending') {
        parts.push(h('p', { class: 'note', 'data-testid': 'detail-final' }, [
          'This request is no longer pending: ', stateBadge(a.state), '.',
        ]));
      }
      ui.detailBody.replaceChildren(...parts);
    }

    // The server decides who may do what (never the requester approving their own request); a
    // requester may also withdraw an approved request that was not re-sent yet.
    const canDecide = a.can_decide === true;
    const canCancel = a.can_cancel === true;
    ui.approve.hidden = !canDecide;
    ui.deny.hidden = !canDecide;
    ui.cancel.hidden = !canCancel;
    ui.comment.hidden = !canDecide;
    ui.comment.labels.forEach((l) => { l.hidden = !canDecide; });
    ui.actions.hidden = !(canDecide || canCancel);
    setBusy(state.busy);
  }

  function setBusy(b) {
    state.busy = b;
    ui.approve.disabled = b;
    ui.deny.disabled = b;
    ui.cancel.disabled = b;
    ui.decidedList.querySelectorAll('button').forEach((btn) => { btn.disabled = b; });
  }

  async function act(action, forId) {
    const id = forId || state.openId;
    if (!id || state.busy) return;
    clearAlert();
    notify('');
    const gen = state.gen;
    const fromDetail = id === state.openId;
    const comment = fromDetail ? ui.comment.value.trim() : '';
    const body = action !== 'cancel' && comment ? { comment } : {};
    setBusy(true);
    try {
      const updated = await api(`approvals/${enc(id)}/${action}`, { method: 'POST', body });
      if (gen !== state.gen) return;
      if (fromDetail) ui.comment.value = '';
      const done = { approve: 'Approved', deny: 'Denied', cancel: 'Cancelled' }[action];
      notify(`${done} ${id}.`);
      if (updated && typeof updated === 'object') {
        const i = state.approvals.findIndex((x) => String(x.id) === id);
        if (i >= 0) state.approvals[i] = updated;
        if (state.openId === id) {
          state.open = updated;
          renderDetail(updated);
        }
        renderDecided();
      }
    } catch (e) {
      if (gen !== state.gen) return;
      if (e.status === 401) {
        sessionRefused(e);
        return;
      }
      showAlert(e, 'action');
    } finally {
      if (gen === state.gen) setBusy(false);
    }
    refresh();
  }

  // ---------- decided list ----------

  function whenText(a) {
    if (a.state === 'used' && a.used_at) return `used ${absTime(a.used_at)} (${ago(a.used_at)})`;
    if (a.state === 'expired') return `expired ${absTime(a.expires_at)} (${ago(a.expires_at)})`;
    const decisions = Array.isArray(a.decisions) ? a.decisions : [];
    const last = decisions.length ? decisions[decisions.length - 1] : null;
    let s = last && last.at ? `${decisionWord(last.decision)} ${absTime(last.at)} (${ago(last.at)})` : '';
    if (a.state === 'approved') s += `${s ? '; ' : ''}${expiresText(a)}`;
    if (a.state === 'cancelled' && !s) s = 'cancelled by the requester';
    return s || '—';
  }

  function renderDecided() {
    const decided = state.approvals.filter((a) => a.state !== 'pending');
    ui.decidedCount.textContent = `(${decided.length})`;
    ui.decidedEmpty.hidden = decided.length > 0;
    const sig = JSON.stringify(decided.map((a) => [a, createdText(a), whenText(a)]));
    if (sig === state.sig.decided) return;
    state.sig.decided = sig;

    const active = document.activeElement;
    const focusedTestId = active && ui.decidedList.contains(active) ? active.getAttribute('data-testid') : null;
    ui.decidedList.replaceChildren(...decided.map((a) => {
      const decisions = Array.isArray(a.decisions) ? a.decisions : [];
      return h('li', { class: 'card', 'data-testid': `decided-${txt(a.id)}` }, [
        h('div', { class: 'card-head' }, [
          stateBadge(a.state),
          ' ',
          h('code', { class: 'request', text: `${txt(a.method)} ${txt(a.target)}` }),
        ]),
        h('p', { class: 'row-meta', text: `${txt(a.id)} · requested by ${txt(a.requester)} · rule ${txt(a.rule)} · ${createdText(a)}` }),
        h('p', { class: 'row-meta', 'data-testid': 'decided-when', text: whenText(a) }),
        decisions.length
          ? decisionsList(decisions, 'decisions')
          : h('p', { class: 'note', text: 'No decisions recorded.' }),
        a.can_cancel === true ? cancelButton(String(a.id)) : null,
      ]);
    }));
    if (focusedTestId) {
      const again = ui.decidedList.querySelector(`[data-testid="${CSS.escape(focusedTestId)}"]`);
      if (again) again.focus();
      else ui.tabs.decided.focus();
    }
  }

  // An approved request that was not re-sent yet can still be withdrawn by its requester.
  function cancelButton(id) {
    const btn = h('button', {
      type: 'button',
      class: 'secondary small',
      'data-testid': `cancel-${id}`,
      text: 'Cancel my request',
    });
    if (state.busy) btn.disabled = true;
    btn.addEventListener('click', () => act('cancel', id));
    return h('div', { class: 'card-actions' }, btn);
  }

  // ---------- audit: audit.js ----------

  const loadAudit = (gen) => window.tlgwAudit.load(gen);

  // ---------- keys: keys.js ----------

  // What the tab scripts beside this one (keys.js, audit.js, deferred.js) share of the page: its API client,
  // its DOM helpers, its state and its messages. Set before they run (all scripts are deferred, in
  // order).
  window.tlgwApi = api;
  window.tlgwPage = Object.freeze({
    api, h, txt, absTime, timeEl, ui, state, setBusy, clearAlert, showAlert, notify, sessionRefused, ApiError,
    AUDIT_LIMIT,
  });
  const loadKeys = (gen) => window.tlgwKeys.load(gen);

  // ---------- wiring ----------

  ui.signinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    signIn(ui.keyInput.value.trim());
  });
  ui.signOut.addEventListener('click', signOut);
  for (const t of Object.keys(ui.tabs)) {
    ui.tabs[t].addEventListener('click', () => selectTab(t, false));
    ui.tabs[t].addEventListener('keydown', onTabKey);
  }
  ui.detailClose.addEventListener('click', closeDetail);
  ui.detail.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      ev.preventDefault();
      closeDetail();
    }
  });
  ui.detailTitle.tabIndex = -1;
  ui.approve.addEventListener('click', () => act('approve'));
  ui.deny.addEventListener('click', () => act('deny'));
  ui.cancel.addEventListener('click', () => act('cancel'));

  // Which ways to sign in are on; then a session (cookie) or a saved key, if any.
  function showSignIn() {
    ui.signin.hidden = false;
    ui.sso.hidden = !state.signInOptions.oidc;
    ui.signinForm.hidden = !state.signInOptions.key_sign_in;
    ui.keyHint.hidden = !state.signInOptions.key_sign_in;
    if (state.signInOptions.key_sign_in) ui.keyInput.focus();
  }

  async function start() {
    ui.signin.hidden = true;
    try {
      const resp = await fetch(new URL('sign-in.json', location.href), { cache: 'no-store', credentials: 'omit' });
      if (resp.ok) state.signInOptions = await resp.json();
    } catch (_) { /* the defaults: key sign-in */ }
    const saved = state.signInOptions.key_sign_in ? sessionStorage.getItem(STORAGE_KEY) : null;
    if (!saved) sessionStorage.removeItem(STORAGE_KEY);
    if (saved) {
      api('me', { key: saved }).then(enterApp, (e) => {
        if (e.status === 401) sessionStorage.removeItem(STORAGE_KEY);
        showSignIn();
        showAlert(e, 'action');
      });
    } else if (state.signInOptions.oidc) {
      api('me', { key: '' }).then(enterApp, (e) => {
        showSignIn();
        // Not signed in yet is no error worth showing; anything else is.
        if (e.status !== 401) showAlert(e, 'action');
      });
    } else {
      showSignIn();
    }
  }

  start();
})();
