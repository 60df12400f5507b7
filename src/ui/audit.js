// tl-gateway page: the recent destructive calls tab (the newest audit records, for ui.audit_roles).
// Kept beside app.js, which owns the tabs and the polling and lends what it shares of the page.
'use strict';

(function () {
  const { api, h, txt, timeEl, ui, state, sessionRefused, AUDIT_LIMIT } = window.tlgwPage;

  async function loadAudit(gen) {
    if (!state.me || state.me.can_read_audit !== true) return;
    try {
      const body = await api(`audit/recent?limit=${AUDIT_LIMIT}`);
      if (gen !== state.gen) return;
      ui.auditError.hidden = true;
      renderAudit(body && Array.isArray(body.records) ? body.records : []);
    } catch (e) {
      if (gen !== state.gen) return;
      if (e.status === 401) {
        sessionRefused(e);
        return;
      }
      ui.auditError.textContent = `Could not load the audit records: ${e.message}`;
      ui.auditError.hidden = false;
    }
  }

  function renderAudit(records) {
    const sig = JSON.stringify(records);
    if (sig === state.sig.audit) return;
    state.sig.audit = sig;
    if (records.length === 0) {
      ui.auditBody.replaceChildren(h('tr', null, h('td', { colspan: '9', class: 'empty', text: 'No destructive calls recorded yet.' })));
      return;
    }
    ui.auditBody.replaceChildren(...records.map((r) => {
      const rec = r && typeof r === 'object' ? r : {};
      const params = rec.params && typeof rec.params === 'object' ? Object.values(rec.params).map(txt).join(', ') : '';
      const force = rec.force === true ? 'yes' : rec.force === false ? 'no' : '—';
      return h('tr', null, [
        h('td', null, timeEl(rec.time, false)),
        h('td', { text: txt(rec.phase) }),
        h('td', { text: txt(rec.client) }),
        h('td', { text: txt(rec.operation) }),
        h('td', { class: 'mono', text: txt(params) }),
        h('td', { text: force }),
        h('td', { text: txt(rec.decision) }),
        h('td', { text: txt(rec.rule) }),
        h('td', { text: txt(rec.status) }),
      ]);
    }));
  }

  window.tlgwAudit = Object.freeze({ load: loadAudit });
})();
