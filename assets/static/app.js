// mozpool web page: plain JavaScript over the JSON API (no build step, nothing external).
// Every action is a fetch() of the same API machines use. Mutating calls send JSON with
// the header `X-Requested-With: mozpool`, which a cross-site form cannot, so a CSRF check
// can rely on it. Text from the server is only ever put into the page with textContent.
'use strict';

const MUTATING = new Set(['POST', 'PUT', 'DELETE', 'PATCH']);

async function api(method, path, body) {
  const opts = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (MUTATING.has(method)) {
    opts.headers['X-Requested-With'] = 'mozpool';
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body === undefined ? {} : body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = text; }
  }
  if (!r.ok) {
    const msg = data && data.error ? data.error : `${r.status} ${r.statusText}`;
    const e = new Error(msg);
    e.status = r.status;
    throw e;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === '') continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// The API's `2026-11-25T09:44:28.910000` as the pages show it: `2026-11-25 09:44:28`.
const when = (iso) => (iso || '').slice(0, 19).replace('T', ' ');

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// A confirmation with the page's <dialog> (keyboard and screen-reader friendly).
function confirmAction(message) {
  const d = document.getElementById('confirm');
  if (!d || typeof d.showModal !== 'function') return Promise.resolve(window.confirm(message));
  document.getElementById('confirm-text').textContent = message;
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.returnValue = '';
    d.showModal();
    document.getElementById('confirm-ok').focus();
  });
}

function show(target, ok, text) {
  if (!target) return;
  target.textContent = text;
  target.classList.toggle('ok', ok);
  target.classList.toggle('err', !ok);
  target.setAttribute('role', ok ? 'status' : 'alert');
}

// Run an action: confirm (when a question is given), call, show the result verbatim.
async function act(button, result, question, call, done) {
  if (question && !(await confirmAction(question))) {
    show(result, true, 'Cancelled.');
    return;
  }
  if (button) button.disabled = true;
  show(result, true, 'Working…');
  try {
    const data = await call();
    show(result, true, done(data));
  } catch (e) {
    show(result, false, e.status ? `Refused (${e.status}): ${e.message}` : `Failed: ${e.message}`);
  } finally {
    if (button) button.disabled = false;
  }
}

// Follow the rack: long polls of a feed (/api/pool/overview/ unless told otherwise) that
// return when any device or request changes (or after 25 s), calling onUpdate with the
// fresh overview each time.
function follow(initialVersion, onUpdate, feed = '/api/pool/overview/') {
  const live = document.getElementById('live');
  let version = initialVersion;
  let failures = 0;
  const kick = { now: null };
  (async () => {
    for (;;) {
      try {
        const q = version === null ? '' : `?since=${encodeURIComponent(version)}&wait=25`;
        const v = await api('GET', `${feed}${q}`);
        failures = 0;
        if (live) { live.textContent = 'Live updates on'; live.classList.remove('off'); }
        const changed = v.version !== version;
        version = v.version;
        await onUpdate(v, changed);
        if (changed) await sleep(250); // let a burst of changes settle
      } catch (e) {
        failures += 1;
        if (live) { live.textContent = `Live updates lost (${e.message}); retrying`; live.classList.add('off'); }
        await sleep(Math.min(30000, 1000 * 2 ** failures));
      }
    }
  })();
  return kick;
}

// Replace a table's body without losing the user's place: the focused link or button and
// anything typed into inputs (renew durations) survive a live update. While the user is in
// one of the table's inputs, the new body waits until focus leaves the table: replacing the
// input under their fingers would put the caret back at the start of what they typed.
function rebuild(table, body) {
  const a = document.activeElement;
  if (a && a.tagName === 'INPUT' && table.contains(a)) {
    if (!table.pendingBody) {
      table.addEventListener('focusout', function apply(ev) {
        if (ev.relatedTarget && table.contains(ev.relatedTarget)) return;
        table.removeEventListener('focusout', apply);
        const pending = table.pendingBody;
        table.pendingBody = null;
        if (pending) rebuild(table, pending);
      });
    }
    table.pendingBody = body;
    return;
  }
  table.pendingBody = null;
  let key = null;
  if (a && table.contains(a)) {
    if (a.id) key = `#${CSS.escape(a.id)}`;
    else if (a.getAttribute('href')) key = `a[href="${CSS.escape(a.getAttribute('href'))}"]`;
    else if (a.dataset.renew) key = `button[data-renew="${CSS.escape(a.dataset.renew)}"]`;
    else if (a.dataset.return) key = `button[data-return="${CSS.escape(a.dataset.return)}"]`;
  }
  const values = {};
  for (const i of table.querySelectorAll('input[id]')) values[i.id] = i.value;
  table.tBodies[0].replaceWith(body);
  for (const [id, v] of Object.entries(values)) {
    const i = document.getElementById(id);
    if (i) i.value = v;
  }
  if (key) {
    const n = table.querySelector(key);
    if (n) n.focus();
  }
}

// The history section (server-drawn SVG pictures) follows the page: after a change, the
// page itself is fetched again and its #history section swapped in, at most every 15 s
// (the pictures count hours, so more often would only cost the server).
const HISTORY_EVERY = 15000;
let historyAt = Date.now();
let historyTimer = null;
function refreshHistory() {
  const section = document.getElementById('history');
  if (!section || historyTimer) return;
  historyTimer = setTimeout(async () => {
    historyTimer = null;
    historyAt = Date.now();
    try {
      const r = await fetch(window.location.pathname + window.location.search,
        { credentials: 'same-origin', headers: { Accept: 'text/html' } });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      const fresh = doc.getElementById('history');
      if (!fresh) return;
      const a = document.activeElement;
      const key = a && section.contains(a) ? (a.dataset.start || a.dataset.window || null) : null;
      section.replaceChildren(...[...fresh.childNodes].map((n) => document.importNode(n, true)));
      if (key) {
        const again = section.querySelector(`[data-start="${CSS.escape(key)}"][tabindex], a[data-window="${CSS.escape(key)}"]`);
        if (again) again.focus();
      }
    } catch (_) { /* the next change tries again */ }
  }, Math.max(0, historyAt + HISTORY_EVERY - Date.now()));
}

async function fillSelect(select, items, keep) {
  const current = keep !== undefined ? keep : select.value;
  for (const o of [...select.options]) if (o.dataset.dynamic) o.remove();
  for (const it of items) {
    const o = el('option', { value: it.value, text: it.label });
    o.dataset.dynamic = '1';
    select.append(o);
  }
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

// ---------------------------------------------------------------- pool page

function deviceRow(d) {
  const name = el('th', { scope: 'row', 'data-label': 'Device' },
    el('a', { href: d.href || `/ui/device/${encodeURIComponent(d.name)}/`, text: d.name }));
  if (d.needs_tech) name.append(' ', el('span', { class: 'tag warn', title: d.needs_tech, text: 'needs a tech' }));
  const held = el('td', { 'data-label': 'Held by' });
  if (d.request !== null && d.request !== undefined) {
    // Cluster mode: another rack's holder is a shared request, with a page of its own.
    held.append(el('a', { href: d.request_href || `/ui/requests/#request-${d.request}`, text: `#${d.request}` }), ` ${d.assignee}`);
  }
  // Cluster mode only: which controller owns the device.
  const controller = d.controller === undefined ? [] : [el('td', { 'data-label': 'Controller', class: 'controller', text: d.controller })];
  const tr = el('tr', { class: d.look.class, 'data-name': d.name, 'data-state': d.state },
    name,
    ...controller,
    el('td', { 'data-label': 'State' }, el('span', { class: `state ${d.look.class}`, text: d.state }), ' ',
      el('span', { class: 'look', text: d.look.label })),
    el('td', { 'data-label': 'Hardware', text: d.hardware_type }),
    el('td', { 'data-label': 'Pool', text: d.pool }),
    el('td', { 'data-label': 'Environment', text: d.environment }),
    held,
    el('td', { 'data-label': 'Until', text: d.until }),
    el('td', { 'data-label': 'Last log', class: 'log' }, el('time', { text: d.last_log_time }), ` ${d.last_log}`));
  return tr;
}

function poolPage() {
  const table = document.getElementById('devices');
  const filter = document.getElementById('filter');
  const problems = document.getElementById('only-problems');
  const counts = document.getElementById('counts');
  let stateFilter = null;

  function applyFilter() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const tr of table.tBodies[0].rows) {
      const text = tr.textContent.toLowerCase();
      const ok = words.every((w) => text.includes(w))
        && (!stateFilter || `${tr.dataset.state} ${tr.className}` === stateFilter)
        && (!problems.checked || tr.classList.contains('failed') || tr.classList.contains('out'));
      tr.hidden = !ok;
      if (ok) shown += 1;
    }
    document.getElementById('empty').hidden = shown > 0;
  }

  function bindChips() {
    const key = (b) => `${b.dataset.state} ${b.dataset.class}`;
    for (const b of counts.querySelectorAll('button.chip')) {
      b.setAttribute('aria-pressed', String(key(b) === stateFilter));
      b.addEventListener('click', () => {
        stateFilter = stateFilter === key(b) ? null : key(b);
        for (const o of counts.querySelectorAll('button.chip')) o.setAttribute('aria-pressed', String(key(o) === stateFilter));
        applyFilter();
      });
    }
  }

  let last = '';
  function render(v) {
    const snapshot = JSON.stringify([v.devices, v.counts]);
    if (snapshot === last) return;
    last = snapshot;
    const body = el('tbody');
    for (const d of v.devices) body.append(deviceRow(d));
    rebuild(table, body);
    const chip = document.activeElement && counts.contains(document.activeElement) ? document.activeElement.dataset : null;
    counts.replaceChildren(...v.counts.map((c) => el('li', {},
      el('button', { type: 'button', class: `chip ${c.look.class}`, 'data-state': c.state, 'data-class': c.look.class, 'aria-pressed': 'false' },
        el('span', { text: c.look.class === 'held' ? `${c.state} (in use)` : c.state }), ' ', el('b', { text: String(c.count) })))));
    if (stateFilter && !v.counts.some((c) => `${c.state} ${c.look.class}` === stateFilter)) stateFilter = null;
    document.getElementById('total').textContent = String(v.total);
    const warning = document.getElementById('cluster-warning');
    if (warning && v.cluster_warning !== undefined) {
      warning.hidden = !v.cluster_warning;
      warning.querySelector('span').textContent = v.cluster_warning ? v.cluster_warning.message : '';
    }
    table.dataset.version = String(v.version);
    bindChips();
    if (chip) {
      const again = counts.querySelector(`button[data-state="${CSS.escape(chip.state)}"][data-class="${CSS.escape(chip.class)}"]`);
      if (again) again.focus();
    }
    applyFilter();
  }

  filter.addEventListener('input', applyFilter);
  problems.addEventListener('change', applyFilter);
  bindChips();
  applyFilter();
  follow(Number(table.dataset.version), (v, changed) => {
    render(v);
    if (changed) refreshHistory();
  });
}

// ---------------------------------------------------------------- device page

function logRow(l) {
  const who = el('td', {}, l.source);
  if (l.actor) who.append(' ', el('span', { class: 'muted', text: `(${l.actor})` }));
  const tr = el('tr', { 'data-id': l.id, 'data-source': l.source },
    el('td', {}, el('time', { text: when(l.timestamp) })), who, el('td', { text: l.message }));
  return tr;
}

function devicePage() {
  const name = document.getElementById('device').dataset.name;
  const base = `/api/device/${encodeURIComponent(name)}`;
  const result = document.getElementById('result');
  const log = document.getElementById('log');
  const showApi = document.getElementById('show-api');
  const older = document.getElementById('older');
  const pageSize = Number(log.dataset.pageSize) || 50;

  const filterLog = () => {
    for (const tr of log.tBodies[0].rows) tr.hidden = !showApi.checked && tr.dataset.source === 'api';
  };
  showApi.addEventListener('change', filterLog);
  filterLog();

  async function refreshLog() {
    const data = await api('GET', `/api/log/?device=${encodeURIComponent(name)}&limit=${pageSize}`);
    const body = log.tBodies[0];
    const newest = body.rows.length ? Number(body.rows[0].dataset.id) : 0;
    const fresh = data.log.filter((l) => l.id > newest);
    for (const l of fresh.reverse()) {
      const tr = logRow(l);
      tr.classList.add('fresh');
      body.prepend(tr);
    }
    filterLog();
  }

  older.addEventListener('click', async () => {
    try {
      const data = await api('GET', `/api/log/?device=${encodeURIComponent(name)}&before=${older.dataset.before}&limit=${pageSize}`);
      for (const l of data.log) log.tBodies[0].append(logRow(l));
      filterLog();
      if (data.log.length < pageSize || data.next_before === null) older.hidden = true;
      else older.dataset.before = String(data.next_before);
    } catch (e) { show(result, false, `Could not load older entries: ${e.message}`); }
  });

  function update(row) {
    const s = document.getElementById('dev-state');
    s.textContent = row.state;
    s.className = `state ${row.look.class}`;
    document.getElementById('dev-look').textContent = row.look.label;
    document.getElementById('force-from').textContent = row.state;
    const holder = document.getElementById('holder');
    if (row.request !== null && row.request !== undefined) {
      holder.replaceChildren('Held by request ', el('a', { href: `/ui/requests/#request-${row.request}`, text: `#${row.request}` }),
        ` for ${row.assignee} until ${row.until} UTC.`);
    } else holder.textContent = 'Not held by any request.';
  }

  const actions = {
    'power-cycle': ['Power-cycle', 'POST', '/power-cycle/'],
    reboot: ['Reboot', 'POST', '/reboot/'],
    'self-test': ['Run a self-test on', 'POST', '/event/please_self_test/'],
    'maintenance-on': ['Put into maintenance', 'POST', '/event/please_start_maintenance/'],
    'maintenance-off': ['End maintenance of', 'POST', '/event/please_end_maintenance/'],
    'power-off': ['Power off', 'POST', '/power-off/'],
    'power-on': ['Power on', 'POST', '/power-on/'],
    'address-accept': ['Move to the announced address:', 'POST', '/address-change/accept/'],
    'address-dismiss': ['Keep the current address of', 'POST', '/address-change/dismiss/'],
  };
  for (const b of document.querySelectorAll('button[data-action]')) {
    const what = b.dataset.action;
    b.addEventListener('click', () => {
      if (what === 'ping') {
        act(b, result, null, () => api('GET', `${base}/ping/`),
          (d) => (d.success ? 'Ping: the device answered.' : `Ping: no answer (${d.error || 'unreachable'}).`));
        return;
      }
      const [verb, method, path] = actions[what];
      act(b, result, `${verb} ${name}?`, () => api(method, base + path),
        (d) => `${b.textContent}: accepted; the device is now in state ${d && d.state ? d.state : '?'}.`)
        .then(refreshLog).catch(() => {});
    });
  }

  const flashImage = document.getElementById('flash-image');
  api('GET', '/api/image/list/').then((d) => {
    flashImage.querySelector('option[value=""]').textContent = 'choose an image';
    fillSelect(flashImage, d.images.map((i) => ({ value: i.name, label: i.description ? `${i.name} — ${i.description}` : i.name })));
  }).catch((e) => show(result, false, `Could not list images: ${e.message}`));
  api('GET', '/api/environment/list/').then((d) => {
    document.getElementById('env-list').replaceChildren(...d.environments.map((e) => el('option', { value: e })));
  }).catch(() => {});

  document.getElementById('flash-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const image = flashImage.value;
    const boot = document.getElementById('flash-boot').value.trim();
    const body = { image };
    if (boot) body.boot_config = boot;
    act(ev.submitter, result, `Flash ${name} with ${image}? Whatever is on it is lost.`,
      () => api('POST', `${base}/flash/`, body),
      (d) => `Flash: accepted; the device is now in state ${d.state}.`).then(refreshLog).catch(() => {});
  });
  document.getElementById('env-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const environment = document.getElementById('env').value.trim();
    act(ev.submitter, result, `Set the environment of ${name} to "${environment}"?`,
      () => api('POST', `${base}/set-environment/`, { environment }), () => 'Environment saved.');
  });
  document.getElementById('comments-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const comments = document.getElementById('comments').value;
    act(ev.submitter, result, `Save the comments of ${name}?`,
      () => api('POST', `${base}/set-comments/`, { comments }), () => 'Comments saved.');
  });
  document.getElementById('force-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const from = document.getElementById('force-from').textContent;
    const to = document.getElementById('force-to').value.trim();
    act(ev.submitter, result, `Force ${name} from ${from} to ${to}? This skips the state machine's checks.`,
      () => api('POST', `${base}/state-change/${encodeURIComponent(from)}/to/${encodeURIComponent(to)}/`),
      (d) => `State changed; now ${d.state}.`).then(refreshLog).catch(() => {});
  });

  follow(null, async (v, changed) => {
    const row = v.devices.find((d) => d.name === name);
    if (row) update(row);
    await refreshLog();
    if (changed) refreshHistory();
  });
}

// ---------------------------------------------------------------- requests page

function requestRow(r, queue) {
  const dev = el('td', { 'data-label': 'Device' });
  if (r.assigned_device) {
    dev.append(el('a', { href: `/ui/device/${encodeURIComponent(r.assigned_device)}/`, text: r.assigned_device }), ' ',
      el('span', { class: 'muted', text: r.device_state }));
  }
  const acts = el('td', { 'data-label': 'Actions', class: 'row-actions' });
  if (r.open && document.body.dataset.canRequest === 'yes') {
    acts.append(el('label', { class: 'sr-only', for: `renew-${r.id}`, text: `Renew #${r.id} for seconds` }),
      el('input', { id: `renew-${r.id}`, class: 'renew-duration', type: 'number', min: '0', value: '3600' }), ' ',
      el('button', { type: 'button', 'data-renew': r.id, text: 'Renew' }), ' ',
      el('button', { type: 'button', 'data-return': r.id, text: 'Return' }));
  }
  return el('tr', { id: `request-${r.id}`, 'data-id': r.id, 'data-state': r.state, 'data-open': r.open ? 'yes' : 'no', 'data-waiting': r.waiting ? 'yes' : 'no' },
    el('th', { scope: 'row', 'data-label': 'Request' }, `#${r.id} `, el('span', { class: 'muted', text: `for ${r.requested_device}` }), ' ',
      el('a', { class: 'small', href: `/ui/request/${r.id}/`, text: 'details and log' })),
    el('td', { 'data-label': 'State' }, el('span', { class: 'rstate', text: r.state })),
    el('td', { 'data-label': 'Assignee', text: r.assignee }),
    dev,
    el('td', { 'data-label': 'Image', text: r.image }),
    el('td', { 'data-label': 'Environment', text: r.environment }),
    el('td', { 'data-label': 'Expires', text: when(r.expires) }),
    el('td', { 'data-label': 'Queue', class: 'queue', text: queue || '' }),
    acts);
}

function requestsPage() {
  const table = document.getElementById('requests');
  const result = document.getElementById('result');
  const includeClosed = document.getElementById('include-closed');
  const form = document.getElementById('request-form');
  let images = [];
  let last = '';

  includeClosed.addEventListener('change', () => {
    window.location.search = includeClosed.checked ? '?closed=1' : '';
  });

  async function queueText(id) {
    try {
      const s = await api('GET', `/api/request/${id}/status/`);
      const parts = [];
      if (s.queue_position !== null && s.queue_position !== undefined) parts.push(`position ${s.queue_position}`);
      if (s.waiting_because) parts.push(s.waiting_because);
      return parts.join(': ');
    } catch (_) { return ''; }
  }

  async function refresh() {
    const closed = table.dataset.includeClosed === 'yes';
    const d = await api('GET', `/api/request/list/${closed ? '?include_closed=1' : ''}`);
    const rows = d.requests.slice().sort((a, b) => b.id - a.id);
    const queues = await Promise.all(rows.map((r) => (r.waiting ? queueText(r.id) : '')));
    const snapshot = JSON.stringify([rows, queues]);
    if (snapshot === last) return;
    last = snapshot;
    const body = el('tbody');
    rows.forEach((r, i) => body.append(requestRow(r, queues[i])));
    rebuild(table, body);
    document.getElementById('empty').hidden = rows.length > 0;
  }

  table.addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    if (b.dataset.return) {
      const id = b.dataset.return;
      act(b, result, `Return request #${id}? Its device is rebooted and checked before anyone else gets it.`,
        () => api('POST', `/api/request/${id}/return/`), () => `Request #${id} returned.`).then(refresh).catch(() => {});
    } else if (b.dataset.renew) {
      const id = b.dataset.renew;
      const duration = Number(document.getElementById(`renew-${id}`).value);
      act(b, result, `Renew request #${id} so it ends ${duration} seconds from now?`,
        () => api('POST', `/api/request/${id}/renew/`, { duration }), () => `Request #${id} renewed for ${duration} s.`)
        .then(refresh).catch(() => {});
    }
  });

  // Queue text for the server-rendered waiting rows.
  for (const tr of table.tBodies[0].rows) {
    if (tr.dataset.waiting === 'yes') queueText(tr.dataset.id).then((t) => { tr.querySelector('td.queue').textContent = t; });
  }

  const imageSel = document.getElementById('rq-image');
  const bootBox = document.getElementById('rq-boot');
  function bootFields() {
    const img = images.find((i) => i.name === imageSel.value);
    bootBox.replaceChildren(...(img ? img.boot_config_keys : []).map((k) => el('div', {},
      el('label', { for: `boot-${k}`, text: `${k} (boot config of ${img.name})` }),
      el('input', { id: `boot-${k}`, 'data-boot-key': k, required: true, autocomplete: 'off' }))));
  }
  imageSel.addEventListener('change', bootFields);

  api('GET', '/api/image/list/').then((d) => {
    images = d.images;
    imageSel.querySelector('option[value=""]').textContent = 'choose an image';
    fillSelect(imageSel, images.map((i) => ({ value: i.name, label: i.name })));
    if (!imageSel.value && images.length) imageSel.value = images[0].name;
    bootFields();
  }).catch((e) => show(result, false, `Could not list images: ${e.message}`));
  api('GET', '/api/device/list/').then((d) => fillSelect(document.getElementById('rq-device'),
    d.devices.map((n) => ({ value: n, label: n })))).catch(() => {});
  api('GET', '/api/environment/list/').then((d) => fillSelect(document.getElementById('rq-environment'),
    d.environments.map((n) => ({ value: n, label: n })))).catch(() => {});
  api('GET', '/api/hardware-type/list/').then((d) => fillSelect(document.getElementById('rq-hardware'),
    d.hardware_types.map((h) => ({ value: h.name, label: h.processor ? `${h.name} (${h.processor})` : h.name })))).catch(() => {});

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const device = f.get('device') || 'any';
    const body = {
      assignee: f.get('assignee'),
      duration: Number(f.get('duration')),
      image: f.get('image'),
      environment: f.get('environment') || 'any',
    };
    for (const k of ['hardware_type', 'processor', 'pool', 'os_version']) if (f.get(k)) body[k] = f.get(k);
    if (f.get('priority')) body.priority = Number(f.get('priority'));
    if (f.get('wait') !== '' && f.get('wait') !== null) body.wait = Number(f.get('wait'));
    for (const i of bootBox.querySelectorAll('input[data-boot-key]')) body[i.dataset.bootKey] = i.value;
    act(ev.submitter, result, `Request ${device === 'any' ? 'any device' : device} with ${body.image} for ${body.assignee}, ${body.duration} s?`,
      () => api('POST', `/api/device/${encodeURIComponent(device)}/request/`, body),
      (d) => `Request #${d.request.id} created: ${d.request.state}${d.request.assigned_device ? ` (${d.request.assigned_device})` : ''}.`)
      .then(refresh).catch(() => {});
  });

  follow(null, (v, changed) => {
    if (changed) refreshHistory();
    return refresh();
  });
}

// ---------------------------------------------------------------- relay boards page

function failureRow(f) {
  const where = el('td', {});
  if (f.device) where.append(el('a', { href: `/ui/device/${encodeURIComponent(f.device)}/`, text: f.device }), ' ');
  where.append(el('span', { class: 'muted', text: f.relay || 'whole board' }));
  return el('tr', {}, el('td', {}, el('time', { text: f.at })), where, el('td', { text: f.op }), el('td', { text: f.error }));
}

// Redraw one board's section from the feed, leaving its test button and result alone.
function renderBoard(section, b) {
  section.className = `panel board ${b.health}`;
  const health = section.querySelector('.board-health');
  health.replaceChildren(el('span', { class: `health ${b.health}`, text: b.health }),
    ` · ${b.ops_ok} operations ok, ${b.ops_failed} failed, ${b.queued} queued${b.last_ok ? ` · last ok ${b.last_ok} UTC` : ''}`);
  const err = section.querySelector('.board-error');
  err.textContent = `Last error: ${b.last_error}`;
  err.hidden = !b.last_error;
  const failures = section.querySelector('.board-failures');
  if (b.failures.length) {
    const body = el('tbody');
    for (const f of b.failures) body.append(failureRow(f));
    failures.replaceChildren(
      el('h3', {}, 'Recent failures ', el('span', { class: 'muted', text: '(newest first)' })),
      el('div', { class: 'table-wrap' }, el('table', { class: 'compact failures' },
        el('caption', { class: 'sr-only', text: `Recent failed operations on ${b.name}, newest first` }),
        el('thead', {}, el('tr', {}, ...['Time (UTC)', 'Device / relay', 'Operation', 'Error'].map((t) => el('th', { scope: 'col', text: t })))),
        body)));
  } else {
    failures.replaceChildren(el('p', { class: 'muted', text: 'No failed operations since the service started.' }));
  }
  const devices = section.querySelector('.board-devices');
  if (b.devices.length) {
    const body = el('tbody');
    for (const d of b.devices) {
      body.append(el('tr', {},
        el('th', { scope: 'row' }, el('a', { href: `/ui/device/${encodeURIComponent(d.name)}/`, text: d.name })),
        el('td', { text: d.relay }),
        el('td', {}, el('span', { class: `state ${d.look.class}`, text: d.state }))));
    }
    devices.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'compact' },
      el('caption', { class: 'sr-only', text: `Devices wired to ${b.name}` }),
      el('thead', {}, el('tr', {}, ...['Device', 'Relay', 'State'].map((t) => el('th', { scope: 'col', text: t })))),
      body)));
  } else {
    devices.replaceChildren(el('p', { class: 'muted', text: 'No devices wired to it.' }));
  }
}

function relaysPage() {
  const boards = document.getElementById('boards');
  for (const b of document.querySelectorAll('button[data-test]')) {
    const out = b.parentElement.querySelector('.result');
    b.addEventListener('click', () => act(b, out, null,
      () => api('GET', `/api/relay/${encodeURIComponent(b.dataset.test)}/test/`),
      (d) => (d.success ? 'The board answered both ways.' : `No answer: ${d.error || 'unknown error'}`)));
  }
  let last = '';
  follow(Number(boards.dataset.version), (v) => {
    const snapshot = JSON.stringify(v.boards);
    if (snapshot === last) return;
    last = snapshot;
    boards.dataset.version = String(v.version);
    for (const b of v.boards) {
      const section = boards.querySelector(`section[data-board="${CSS.escape(b.name)}"]`);
      if (section) renderBoard(section, b);
    }
  }, '/api/relay/overview/');
}

// ---------------------------------------------------------------- request page

function requestPage() {
  const id = document.getElementById('request').dataset.id;
  const log = document.getElementById('log');
  follow(null, async () => {
    // status/ carries the queue position and reason (and, in cluster mode, the device's
    // controller); log/ every line the request keeps.
    const [s, l] = await Promise.all([api('GET', `/api/request/${id}/status/`), api('GET', `/api/request/${id}/log/`)]);
    document.getElementById('rq-state').textContent = s.state;
    const dev = document.getElementById('rq-device');
    const controller = s.controller || '';
    // The server rendered the link to the owner's page; rebuild it only when the device
    // changed. This controller sends `?controller=` links on to the device's owner.
    if (dev.dataset.device !== s.assigned_device || dev.dataset.controller !== controller) {
      dev.dataset.device = s.assigned_device;
      dev.dataset.controller = controller;
      if (s.assigned_device) {
        const q = controller ? `?controller=${encodeURIComponent(controller)}` : '';
        dev.replaceChildren('Device ', el('a', { href: `/ui/device/${encodeURIComponent(s.assigned_device)}/${q}`, text: s.assigned_device }),
          controller ? ` on controller ${controller}.` : '.');
      } else dev.textContent = 'No device assigned.';
    }
    const waiting = s.queue_position !== null && s.queue_position !== undefined;
    document.getElementById('rq-queue').hidden = !waiting;
    document.getElementById('rq-position').textContent = waiting ? String(s.queue_position) : '—';
    document.getElementById('rq-why').textContent = waiting && s.waiting_because ? `: ${s.waiting_because}` : '';
    const body = log.tBodies[0];
    const newest = body.rows.length ? Number(body.rows[body.rows.length - 1].dataset.id) : 0;
    for (const e of l.log.filter((x) => x.id > newest)) {
      const tr = logRow(e);
      tr.classList.add('fresh');
      body.append(tr);
    }
    document.getElementById('empty-log').hidden = body.rows.length > 0;
  });
}

document.addEventListener('DOMContentLoaded', () => {
  const page = document.body.dataset.page;
  if (page === 'pool') poolPage();
  else if (page === 'device') devicePage();
  else if (page === 'requests') requestsPage();
  else if (page === 'relays') relaysPage();
  else if (page === 'request') requestPage();
});
