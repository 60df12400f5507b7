// tl-gateway page: the Scheduled tab (deferred calls, the undo window). Plain DOM, no framework.
//
// Kept beside app.js (which owns sign-in and switches the tabs, this one included) and sharing
// only the page: its API client (window.tlgwApi) and the notice/alert areas. Every value from
// the API is set as textContent; the countdown is computed here from execute_at every second, the
// list is read again every 3 seconds while the tab is open.
'use strict';

(function () {
  const API_BASE = new URL('../v1/', location.href);
  const POLL_MS = 3000;

  const $ = (id) => document.getElementById(id);
  const tab = $('tab-scheduled');
  const panel = $('panel-scheduled');
  const list = $('scheduled-list');
  const empty = $('scheduled-empty');
  const count = $('scheduled-count');
  const app = $('app');
  const notice = $('notice');
  const alertBox = $('alert');

  let calls = [];
  let open = false;
  let lastPoll = 0;
  let busy = false;
  // A link from a notification (#/deferred/ID) opens this tab once signed in.
  let linked = /^#\/deferred\/[A-Za-z0-9_-]{1,64}$/.test(location.hash);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  // The page's one API client (app.js): the personal key, or the signed-in session's cookie with
  // its CSRF token on a change. Errors carry status and code.
  function api(path, method) {
    return window.tlgwApi(path, { method: method || 'GET' });
  }

  // "3 min 05 s", "1 h 02 min", "due now".
  function countdown(iso) {
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return 'at an unknown time';
    const left = Math.round((at - Date.now()) / 1000);
    if (left <= 0) return 'due now';
    const h = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const s = left % 60;
    if (h > 0) return `in ${h} h ${String(m).padStart(2, '0')} min`;
    if (m > 0) return `in ${m} min ${String(s).padStart(2, '0')} s`;
    return `in ${s} s`;
  }

  function render() {
    list.replaceChildren();
    empty.hidden = calls.length > 0;
    count.textContent = calls.length ? `(${calls.length})` : '';
    for (const call of calls) {
      const li = el('li', 'card');
      li.dataset.testid = 'scheduled-row';
      li.dataset.id = String(call.id);
      const head = el('div', 'card-head');
      head.append(el('span', 'request', `${call.method} ${call.target}`));
      const clock = el('span', 'countdown', countdown(call.execute_at));
      clock.dataset.testid = 'countdown';
      clock.dataset.executeAt = String(call.execute_at);
      head.append(clock);
      li.append(head);
      const refs = call.references;
      const unlinks = refs && typeof refs === 'object'
        ? ` · unlinks ${(refs.indexed_assets || []).length} indexed asset(s), ${(refs.entities || []).length} entit(y/ies)`
        : '';
      li.append(el('div', 'meta',
        `${call.id} · requested by ${call.requester} · rule ${call.rule} · runs at ${call.execute_at}${unlinks}`));
      if (call.can_cancel === true) {
        const actions = el('div', 'card-actions');
        const button = el('button', 'deny', 'Cancel');
        button.type = 'button';
        button.dataset.testid = 'cancel-deferred';
        button.addEventListener('click', () => cancel(String(call.id), button));
        actions.append(button);
        li.append(actions);
      }
      list.append(li);
    }
  }

  function tickClocks() {
    for (const clock of list.querySelectorAll('[data-testid="countdown"]')) {
      clock.textContent = countdown(clock.dataset.executeAt);
    }
  }

  async function load() {
    if (busy || app.hidden) return;
    busy = true;
    lastPoll = Date.now();
    try {
      const body = await api('deferred?state=scheduled');
      calls = body && Array.isArray(body.deferred) ? body.deferred : [];
      calls.sort((a, b) => String(a.execute_at).localeCompare(String(b.execute_at)));
      render();
    } catch (e) {
      if (open) {
        alertBox.textContent = e.message;
      }
    } finally {
      busy = false;
    }
  }

  async function cancel(id, button) {
    button.disabled = true;
    try {
      await api(`deferred/${encodeURIComponent(id)}/cancel`, 'POST');
      notice.textContent = `Cancelled ${id}: it will not run.`;
      alertBox.textContent = '';
    } catch (e) {
      alertBox.textContent = e.message;
    }
    lastPoll = 0;
    await load();
  }

  // app.js switches the tabs (click, arrow keys) and shows this panel; this file fills it.
  function isOpen() {
    return tab.getAttribute('aria-selected') === 'true' && !panel.hidden;
  }

  tab.addEventListener('click', () => {
    lastPoll = 0;
    load();
  });
  setInterval(() => {
    if (app.hidden) {
      if (calls.length) {
        calls = [];
        render();
      }
      return;
    }
    if (linked) {
      linked = false;
      tab.click();
    }
    const nowOpen = isOpen();
    if (nowOpen && !open) lastPoll = 0;
    open = nowOpen;
    tickClocks();
    if (Date.now() - lastPoll >= (open ? POLL_MS : 4 * POLL_MS)) load();
  }, 1000);
})();
