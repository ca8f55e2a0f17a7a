// pbxbridge console: one small script, no library. The login token lives in this tab's
// sessionStorage and goes out only in the Authorization header (never a cookie, never a
// URL). Every value from the API is written with textContent, never as HTML.
'use strict';
(function () {
  const body = document.body;
  const T = JSON.parse(body.dataset.i18n || '{}');
  const LQ = body.dataset.langQuery || '';
  const KEY = 'pbxbridge.token';
  const $ = (id) => document.getElementById(id);
  let role = null;

  function token() { return sessionStorage.getItem(KEY); }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function toast(msg) {
    const t = $('toast');
    t.textContent = msg;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.textContent = ''; }, 4000);
  }

  function toLogin() {
    sessionStorage.removeItem(KEY);
    location.replace('/console/login' + LQ);
  }

  // fetch with the token; a 401 ends the session. Resolves to {ok, status, data, res}.
  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    let bodyText;
    if (opts.json !== undefined) { headers['Content-Type'] = 'application/json'; bodyText = JSON.stringify(opts.json); }
    const res = await fetch(path, { method: opts.method || 'GET', headers, body: bodyText, credentials: 'omit', cache: 'no-store' });
    if (res.status === 401 && !opts.noRedirect) { toLogin(); throw new Error('unauthorized'); }
    if (opts.raw) return { ok: res.ok, status: res.status, res };
    let data = null;
    const ct = res.headers.get('content-type') || '';
    if (ct.includes('json')) data = await res.json();
    return { ok: res.ok, status: res.status, data, res };
  }

  function errMessage(r) {
    if (r.status === 403) return T.forbidden;
    return (r.data && r.data.error && r.data.error.message) || (T.error + ' ' + r.status);
  }

  // The URL of the live WebSocket: a single-use, short-lived ticket (POST /auth/ws-ticket),
  // never the token.
  async function liveUrl(query) {
    const base = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws?';
    const r = await api('/auth/ws-ticket', { method: 'POST' });
    if (!r.ok || !r.data || !r.data.ticket) throw new Error('no ticket: ' + r.status);
    return base + 'ticket=' + encodeURIComponent(r.data.ticket) + query;
  }

  // A WebSocket to /ws that reconnects by itself (1 s doubling to 15 s); `onMessage` gets
  // every {event, data}; `onState(true|false)` tells whether it is up.
  function live(query, onMessage, onState) {
    let delay = 1000;
    async function open() {
      let url;
      try { url = await liveUrl(query); } catch (e) { setTimeout(open, delay); return; }
      const ws = new WebSocket(url);
      ws.onopen = () => { delay = 1000; onState && onState(true); };
      ws.onmessage = (m) => { try { onMessage(JSON.parse(m.data)); } catch (e) { console.error(e); } };
      ws.onclose = () => {
        onState && onState(false);
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    open();
  }

  function fmtTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(T.lang === 'en' ? 'en-GB' : T.lang);
  }
  function fmtDur(s) {
    s = Math.max(0, Math.floor(s || 0));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const two = (n) => (n < 10 ? '0' : '') + n;
    return h ? h + ':' + two(m) + ':' + two(r) : m + ':' + two(r);
  }
  function closeDialogs() {
    document.querySelectorAll('.close-dialog').forEach((b) => b.addEventListener('click', () => b.closest('dialog').close()));
  }
  function showAdmin() {
    document.querySelectorAll('[data-admin]').forEach((e) => { e.hidden = role !== 'admin'; });
  }

  // ---- login ----
  function loginPage() {
    const f = $('login');
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      $('login-error').textContent = '';
      const r = await api('/auth/login', {
        method: 'POST', noRedirect: true,
        json: { username: f.elements.username.value, password: f.elements.password.value },
      }).catch(() => ({ ok: false, status: 0 }));
      if (r.ok && r.data && r.data.token) {
        sessionStorage.setItem(KEY, r.data.token);
        location.replace('/' + LQ);
      } else {
        $('login-error').textContent = r.status === 429 ? T.tooMany : (r.status === 401 ? T.loginFailed : errMessage(r));
        f.elements.password.focus();
      }
    });
    f.elements.username.focus();
  }

  // ---- extensions ----
  function extensionsPage() {
    let items = [];
    const reg = new Map(); // extension -> 'online' | 'offline'
    let editing = null;
    let refreshTimer = null;
    const form = $('ext-form');
    const dlg = $('ext-dialog');

    function dot(ext) {
      const st = reg.get(ext) || 'unknown';
      return el('span', { class: 'dot ' + st, role: 'img', 'aria-label': T[st], title: T[st], 'data-reg': st });
    }
    function provLabel(p) { return T['prov' + p.state.charAt(0).toUpperCase() + p.state.slice(1)] || p.state; }
    function render() {
      const rows = $('ext-rows');
      rows.replaceChildren();
      for (const e of items) {
        const actions = el('td', { class: 'actions' });
        actions.append(el('button', { type: 'button', text: T.status, 'data-action': 'status', onclick: () => status(e) }));
        if (role === 'admin') {
          actions.append(
            el('button', { type: 'button', text: T.edit, 'data-action': 'edit', onclick: () => openForm(e) }),
            el('button', { type: 'button', text: e.enabled ? T.disable : T.enable, 'data-action': 'toggle', onclick: () => toggle(e) }),
            el('button', { type: 'button', class: 'danger', text: T.delete, 'data-action': 'delete', onclick: () => confirmDelete(e) }),
          );
        }
        const prov = el('span', { class: 'badge prov-' + e.provisioning.state, text: provLabel(e.provisioning), title: e.provisioning.error || null });
        rows.append(el('tr', { 'data-extension': e.extension, 'data-id': e.id },
          el('td', {}, dot(e.extension)),
          el('td', { class: 'num', text: e.extension }),
          el('td', { class: 'name', text: e.displayName }),
          el('td', { text: e.context }),
          el('td', { text: e.transport }),
          el('td', { text: (e.codecs || []).join(', ') }),
          el('td', { text: e.enabled ? T.enabled : T.disabled }),
          el('td', { class: 'prov' }, prov),
          actions));
      }
    }
    async function load() {
      const r = await api('/extensions?limit=500');
      if (!r.ok) { $('ext-error').textContent = errMessage(r); return; }
      items = r.data.items;
      render();
      clearTimeout(refreshTimer);
      if (items.some((e) => e.provisioning.state === 'pending')) refreshTimer = setTimeout(load, 1000);
    }
    function clearErrors() {
      form.querySelectorAll('.field-error').forEach((s) => { s.textContent = ''; });
      form.querySelectorAll('[aria-invalid]').forEach((i) => i.removeAttribute('aria-invalid'));
      $('ext-form-error').textContent = '';
    }
    function openForm(e) {
      editing = e || null;
      form.reset();
      clearErrors();
      $('ext-form-h').textContent = e ? T.edit + ' ' + e.extension : T.newExtension;
      const f = form.elements;
      if (e) {
        f.extension.value = e.extension;
        f.displayName.value = e.displayName;
        f.context.value = e.context;
        f.transport.value = e.transport;
        form.querySelectorAll('input[name=codecs]').forEach((c) => { c.checked = e.codecs.includes(c.value); });
        f.maxContacts.value = e.maxContacts;
        f.enabled.checked = e.enabled;
      }
      dlg.showModal();
      f.extension.focus();
    }
    function formBody() {
      const f = form.elements;
      const b = {
        extension: f.extension.value.trim(),
        displayName: f.displayName.value,
        context: f.context.value.trim(),
        transport: f.transport.value,
        codecs: Array.from(form.querySelectorAll('input[name=codecs]:checked')).map((c) => c.value),
        maxContacts: Number(f.maxContacts.value),
        enabled: f.enabled.checked,
      };
      if (f.password.value) b.password = f.password.value;
      return b;
    }
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors();
      const b = formBody();
      const r = editing
        ? await api('/extensions/' + encodeURIComponent(editing.id), { method: 'PATCH', json: b })
        : await api('/extensions', { method: 'POST', json: b });
      if (!r.ok) {
        const field = r.data && r.data.error && r.data.error.field;
        const slot = field && form.querySelector('[data-error-for="' + CSS.escape(field) + '"]');
        if (slot) {
          slot.textContent = errMessage(r);
          const input = form.querySelector('[name="' + CSS.escape(field) + '"]');
          if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
        } else {
          $('ext-form-error').textContent = errMessage(r);
        }
        return;
      }
      dlg.close();
      if (!editing) showSecret(r.data, b.password);
      await load();
    });
    function showSecret(e, given) {
      const tr = e.transport || '';
      const port = /tls/.test(tr) ? 5061 : /wss/.test(tr) ? 8089 : /ws/.test(tr) ? 8088 : 5060;
      const proto = /tls/.test(tr) ? 'TLS' : /wss/.test(tr) ? 'WSS' : /ws/.test(tr) ? 'WS' : /tcp/.test(tr) ? 'TCP' : 'UDP';
      $('sip-server').textContent = location.hostname;
      $('sip-port').textContent = String(port);
      $('sip-transport').textContent = proto;
      $('sip-username').textContent = e.extension;
      $('sip-auth').textContent = e.extension;
      $('sip-password').textContent = e.password || given || '';
      $('ext-secret').showModal();
    }
    $('sip-copy').addEventListener('click', async () => {
      const pw = $('sip-password').textContent;
      try { await navigator.clipboard.writeText(pw); toast(T.copied); } catch (e) {
        const range = document.createRange();
        range.selectNodeContents($('sip-password'));
        const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range);
      }
    });
    $('ext-secret').addEventListener('close', () => { $('sip-password').textContent = ''; });
    async function toggle(e) {
      const r = await api('/extensions/' + encodeURIComponent(e.id), { method: 'PATCH', json: { enabled: !e.enabled } });
      if (!r.ok) toast(errMessage(r));
      await load();
    }
    function confirmDelete(e) {
      $('confirm-what').textContent = e.extension + (e.displayName ? ' · ' + e.displayName : '');
      $('confirm-yes').onclick = async () => {
        const r = await api('/extensions/' + encodeURIComponent(e.id), { method: 'DELETE' });
        $('ext-confirm').close();
        if (!r.ok) toast(errMessage(r));
        await load();
      };
      $('ext-confirm').showModal();
    }
    async function status(e) {
      $('st-ext').textContent = e.extension;
      $('st-state').textContent = '…';
      $('st-channels').textContent = '';
      $('st-error').textContent = '';
      $('st-contacts').replaceChildren();
      $('ext-status').showModal();
      const r = await api('/extensions/' + encodeURIComponent(e.id) + '/status');
      if (!r.ok) { $('st-error').textContent = errMessage(r); return; }
      const s = r.data;
      $('st-dot').className = 'dot ' + s.state;
      $('st-state').textContent = T[s.state] || s.state;
      $('st-channels').textContent = String(s.activeChannels);
      $('st-error').textContent = s.pbxError || '';
      const rows = $('st-contacts');
      if (!s.contacts.length) rows.append(el('tr', {}, el('td', { colspan: 5, text: T.noContacts })));
      for (const c of s.contacts) {
        rows.append(el('tr', {},
          el('td', { text: c.uri || '' }), el('td', { text: c.userAgent || '' }), el('td', { text: c.status || '' }),
          el('td', { text: c.rttMs == null ? '' : String(c.rttMs) }), el('td', { text: fmtTime(c.expiresAt) })));
      }
    }
    $('ext-new').addEventListener('click', () => openForm(null));
    live('&events=extension_status', (m) => {
      if (m.event === 'snapshot') { reg.clear(); for (const s of m.data.extensions || []) reg.set(s.extension, s.state); }
      else if (m.event === 'extension_status') reg.set(m.data.extension, m.data.state);
      else return;
      document.querySelectorAll('#ext-rows tr').forEach((tr) => {
        const td = tr.firstElementChild;
        td.replaceChildren(dot(tr.dataset.extension));
      });
    });
    closeDialogs();
    load();
  }

  // ---- live calls ----
  function livePage() {
    const calls = new Map(); // callId -> call
    const ended = []; // callIds, newest first
    const KEEP_ENDED = 10;
    function isOver(c) { return c.state === 'ended' || c.state === 'missed'; }
    // `fresh`: a live event (the call was answered just now); else a snapshot, whose
    // billsec counts the talk so far.
    function upsert(d, fresh) {
      const c = Object.assign(calls.get(d.callId) || {}, d);
      if (c.state === 'connected' && c.timerBase === undefined) c.timerBase = Date.now() - (fresh ? 0 : 1000 * (d.billsec || 0));
      calls.set(d.callId, c);
      if (isOver(c)) {
        const i = ended.indexOf(c.callId);
        if (i >= 0) ended.splice(i, 1);
        ended.unshift(c.callId);
        while (ended.length > KEEP_ENDED) calls.delete(ended.pop());
      }
    }
    function item(c) {
      const stateText = isOver(c) ? (c.status ? T.statuses[c.status] : T.states[c.state]) : T.states[c.state];
      const li = el('li', { class: 'call ' + c.state, 'data-call-id': c.callId, 'data-state': c.state },
        el('span', { class: 'state', text: stateText || c.state }),
        el('span', { class: 'who' },
          el('span', { class: 'caller', 'aria-label': T.caller, text: c.fromNumber || '?' }),
          ' → ',
          el('span', { class: 'agent', 'aria-label': T.agent, text: c.extension || c.toNumber || '?' })));
      if (c.transferredTo) li.append(el('span', { class: 'transfer', text: '⇒ ' + c.transferredTo }));
      if (c.state === 'connected') li.append(el('span', { class: 'timer', 'data-base': c.timerBase, text: fmtDur((Date.now() - c.timerBase) / 1000) }));
      else if (isOver(c)) li.append(el('span', { class: 'timer', text: fmtDur(c.billsec) }));
      return li;
    }
    function render() {
      const cols = { ringing: $('live-ringing'), connected: $('live-connected'), ended: $('live-ended') };
      const lists = { ringing: [], connected: [], ended: [] };
      for (const c of calls.values()) if (!isOver(c)) (lists[c.state] || lists.ringing).push(c);
      for (const id of ended) if (calls.has(id)) lists.ended.push(calls.get(id));
      for (const k of Object.keys(cols)) {
        cols[k].replaceChildren(...lists[k].map(item));
        if (!lists[k].length) cols[k].append(el('li', { class: 'empty', text: T.noCalls }));
      }
    }
    setInterval(() => {
      document.querySelectorAll('#live-connected .timer').forEach((t) => { t.textContent = fmtDur((Date.now() - Number(t.dataset.base)) / 1000); });
    }, 1000);
    live('', (m) => {
      if (m.event === 'snapshot') {
        for (const [id, c] of calls) if (!isOver(c)) calls.delete(id);
        for (const c of m.data.calls || []) upsert(c, false);
      } else if (m.event === 'incoming_call' || m.event === 'call_status') {
        upsert(m.data, true);
      } else return;
      render();
    }, (up) => {
      const s = $('live-conn');
      s.textContent = up ? T.liveConnected : T.liveReconnecting;
      s.className = 'conn ' + (up ? 'up' : 'down');
      body.dataset.live = up ? 'up' : 'down';
    });
    render();
  }

  // ---- history ----
  function historyPage() {
    const LIMIT = 50;
    let offset = 0, total = 0;
    const form = $('history-filter');
    function query() {
      const p = new URLSearchParams();
      for (const el of form.elements) {
        if (!el.name || !el.value) continue;
        if (el.name === 'to' && el.type === 'date') {
          // Inclusive end date: up to the next midnight.
          const d = new Date(el.value + 'T00:00:00Z');
          d.setUTCDate(d.getUTCDate() + 1);
          p.set('to', d.toISOString().slice(0, 10));
        } else p.set(el.name, el.value);
      }
      return p;
    }
    async function load() {
      $('history-error').textContent = '';
      const p = query();
      p.set('limit', LIMIT); p.set('offset', offset);
      const r = await api('/calls?' + p);
      if (!r.ok) { $('history-error').textContent = errMessage(r); return; }
      total = r.data.total;
      const rows = $('history-rows');
      rows.replaceChildren();
      for (const c of r.data.items) {
        const label = c.status ? T.statuses[c.status] : T.states[c.state];
        const rec = el('td', {});
        if (c.recordingPath && recordingUrl(c)) {
          rec.append(el('button', { type: 'button', text: T.play, onclick: () => play(c) }));
        }
        rows.append(el('tr', { 'data-call-id': c.callId },
          el('td', { text: fmtTime(c.startTime) }), el('td', { text: T[c.direction] || c.direction }),
          el('td', { text: c.fromNumber || '' }), el('td', { text: c.toNumber || '' }), el('td', { text: c.extension || '' }),
          el('td', { class: 'status', text: label || '' }), el('td', { text: fmtDur(c.duration) }), el('td', { text: fmtDur(c.billsec) }), rec));
      }
      const end = Math.min(offset + LIMIT, total);
      $('history-range').textContent = (total ? offset + 1 : 0) + '–' + end + ' ' + T.of + ' ' + total;
      $('history-prev').disabled = offset === 0;
      $('history-next').disabled = end >= total;
      body.dataset.historyTotal = String(total);
    }
    // Where a call's recording is served: Asterisk recordings by record id, hosted-PBX ones
    // by the provider's call id.
    function recordingUrl(c) {
      if (c.source === 'asterisk') return '/calls/' + encodeURIComponent(c.id) + '/recording';
      if (c.source === 'kavkom' || c.source === 'kerio') {
        return '/' + c.source + '/calls/' + encodeURIComponent(c.callId) + '/recording';
      }
      return null;
    }
    async function play(c) {
      const r = await api(recordingUrl(c), { raw: true, headers: { Accept: 'audio/*' } });
      if (!r.ok) { toast(T.error + ' ' + r.status); return; }
      const player = $('history-player');
      if (player.src) URL.revokeObjectURL(player.src);
      player.src = URL.createObjectURL(await r.res.blob());
      player.hidden = false;
      player.play().catch(() => {});
    }
    form.addEventListener('submit', (ev) => { ev.preventDefault(); offset = 0; load(); });
    $('history-prev').addEventListener('click', () => { offset = Math.max(0, offset - LIMIT); load(); });
    $('history-next').addEventListener('click', () => { offset += LIMIT; load(); });
    $('history-csv').addEventListener('click', async () => {
      const p = query(); p.set('format', 'csv');
      const r = await api('/calls?' + p, { raw: true, headers: { Accept: 'text/csv' } });
      if (!r.ok) { $('history-error').textContent = T.error + ' ' + r.status; return; }
      const url = URL.createObjectURL(await r.res.blob());
      const a = el('a', { href: url, download: 'calls.csv', hidden: true });
      body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      body.dataset.csv = 'done';
    });
    load();
  }

  // ---- dashboard ----
  const SVG = 'http://www.w3.org/2000/svg';
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // A bar chart of [label, value] pairs, as inline SVG with a title per bar.
  function bars(target, pairs) {
    const W = 600, H = 200, pad = 24;
    const max = Math.max(1, ...pairs.map((p) => p[1]));
    const svg = svgEl('svg', { viewBox: '0 0 ' + W + ' ' + (H + pad), class: 'bars', focusable: 'false' });
    const bw = (W - pad) / Math.max(1, pairs.length);
    pairs.forEach(([label, v], i) => {
      const h = Math.round((H - pad) * v / max);
      const g = svgEl('g', {});
      g.append(svgEl('title', {}, label + ': ' + v));
      g.append(svgEl('rect', { x: pad + i * bw + 2, y: H - h, width: Math.max(1, bw - 4), height: h, class: 'bar' }));
      if (pairs.length <= 24) g.append(svgEl('text', { x: pad + i * bw + bw / 2, y: H + 16, 'text-anchor': 'middle', class: 'axis' }, label));
      if (v) g.append(svgEl('text', { x: pad + i * bw + bw / 2, y: H - h - 4, 'text-anchor': 'middle', class: 'val' }, String(v)));
      svg.append(g);
    });
    target.replaceChildren(svg);
    target.setAttribute('aria-description', pairs.filter((p) => p[1]).map((p) => p[0] + ': ' + p[1]).join(', '));
  }
  async function dashboardPage() {
    const start = new Date(); start.setHours(0, 0, 0, 0);
    const from = encodeURIComponent(start.toISOString().replace(/\.\d+Z$/, 'Z'));
    const [byHour, byExt] = await Promise.all([
      api('/stats/calls?groupBy=hour&from=' + from), api('/stats/calls?groupBy=extension&from=' + from)]);
    if (!byHour.ok) { toast(errMessage(byHour)); return; }
    const t = byHour.data.total;
    $('dash-total').textContent = String(t.total);
    $('dash-rate').textContent = Math.round(100 * t.answerRate) + '%';
    $('dash-answered').textContent = String(t.answered);
    $('dash-missed').textContent = String(t.missed);
    const hours = new Array(24).fill(0);
    for (const g of byHour.data.groups) {
      // Keys are UTC hours (YYYY-MM-DDTHH): shown in the browser's time.
      const d = new Date(g.key + ':00:00Z');
      if (!isNaN(d) && d >= start) hours[d.getHours()] += g.total;
    }
    bars($('dash-hour'), hours.map((v, h) => [String(h).padStart(2, '0'), v]));
    if (byExt.ok) bars($('dash-ext'), byExt.data.groups.map((g) => [g.key, g.total]));
  }

  // ---- start ----
  async function start() {
    const page = body.dataset.page;
    if (page === 'login') { loginPage(); return; }
    if (!token()) { toLogin(); return; }
    $('logout').addEventListener('click', () => { sessionStorage.removeItem(KEY); location.replace('/console/login' + LQ); });
    const me = await api('/auth/me');
    if (!me.ok) { toLogin(); return; }
    role = me.data.role;
    $('who-name').textContent = me.data.name;
    $('who-role').textContent = role;
    body.dataset.role = role;
    showAdmin();
    ({ dashboard: dashboardPage, extensions: extensionsPage, live: livePage, history: historyPage })[page]();
    body.dataset.readyMs = String(Math.round(performance.now()));
    body.dataset.ready = '1';
  }
  start().catch((e) => console.error(e));
})();
