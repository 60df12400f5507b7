// tl-gateway page: small DOM and time helpers every script of the page shares (window.tlgwDom).
// Pure functions: elements are built with text content only, never HTML.
'use strict';

(function () {
  // Builds an element. props: 'class', 'text', or plain attributes; never style or handlers.
  function h(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k === 'style' || k.startsWith('on')) throw new Error('not allowed: ' + k);
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of [].concat(children === undefined ? [] : children)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  // Any API value as display text.
  function txt(v) {
    if (v === null || v === undefined || v === '') return '—';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function parseTime(iso) {
    if (typeof iso !== 'string') return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : t;
  }

  // Local date and time, e.g. "2026-12-03 17:05:34".
  function absTime(iso) {
    const t = parseTime(iso);
    if (t === null) return txt(iso);
    const d = new Date(t);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function span(ms) {
    const min = Math.floor(Math.abs(ms) / 60000);
    if (min < 1) return 'less than a minute';
    if (min < 60) return `${min} min`;
    const hours = Math.floor(min / 60);
    if (hours < 48) return min % 60 ? `${hours} h ${min % 60} min` : `${hours} h`;
    const days = Math.floor(hours / 24);
    return `${days} days`;
  }

  function ago(iso) {
    const t = parseTime(iso);
    if (t === null) return 'at an unknown time';
    const d = Date.now() - t;
    return d >= 0 ? `${span(d)} ago` : `in ${span(d)}`;
  }

  function createdText(a) {
    return `created ${ago(a.created_at)}`;
  }

  function expiresText(a) {
    const t = parseTime(a.expires_at);
    if (t === null) return 'no deadline';
    const d = t - Date.now();
    if (a.state === 'approved') {
      return d > 0 ? `re-send within ${span(d)}` : `re-send deadline passed ${span(d)} ago`;
    }
    return d > 0 ? `expires in ${span(d)}` : `expired ${span(d)} ago`;
  }

  function timeEl(iso, withRelative) {
    const label = withRelative ? `${absTime(iso)} (${ago(iso)})` : absTime(iso);
    return h('time', { datetime: typeof iso === 'string' ? iso : null, text: label });
  }

  const STATE_WORDS = {
    pending: 'pending',
    approved: 'approved',
    denied: 'denied',
    expired: 'expired',
    used: 'used',
    cancelled: 'cancelled',
  };

  function stateBadge(st) {
    const word = STATE_WORDS[st] || txt(st);
    const known = Object.prototype.hasOwnProperty.call(STATE_WORDS, st) ? st : 'unknown';
    return h('span', { class: `badge state-${known}`, 'data-testid': 'state', text: word });
  }

  function decisionWord(d) {
    if (d === 'approve') return 'approved';
    if (d === 'deny') return 'denied';
    if (d === 'cancel') return 'cancelled';
    return txt(d);
  }

  function byNewest(list) {
    return list.slice().sort((a, b) => (parseTime(b.created_at) || 0) - (parseTime(a.created_at) || 0));
  }

  window.tlgwDom = Object.freeze({
    h, txt, pad, parseTime, absTime, span, ago, createdText, expiresText, timeEl, STATE_WORDS, stateBadge, decisionWord, byNewest,
  });
})();
