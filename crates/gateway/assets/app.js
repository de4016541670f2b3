// The aiventbus dashboard: one ATP connection (/atp, authenticated by the session cookie), a live
// event subscription that resumes after its last seq on reconnect, and one view per part of the
// daemon. Every value from the daemon reaches the page through text nodes (el/text below), never
// parsed as markup, so an event carrying markup shows the markup as text and runs nothing.
'use strict';

(() => {
  // ------------------------------------------------------------------ small DOM helpers

  const $ = (id) => document.getElementById(id);

  /** A text node; any value becomes its string form (objects as JSON). */
  function text(value) {
    if (value === null || value === undefined) return document.createTextNode('');
    if (typeof value === 'object') return document.createTextNode(JSON.stringify(value));
    return document.createTextNode(String(value));
  }

  /**
   * An element: `props` sets a class, a title, data-* attributes, a few safe attributes and event
   * listeners; children are nodes or values (values become text nodes).
   */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    const p = props || {};
    if (p.class) node.className = p.class;
    if (p.title !== undefined) node.title = String(p.title);
    if (p.type) node.type = p.type;
    if (p.placeholder) node.placeholder = p.placeholder;
    if (p.disabled) node.disabled = true;
    if (p.data) for (const [k, v] of Object.entries(p.data)) node.dataset[k] = String(v);
    if (p.on) for (const [k, f] of Object.entries(p.on)) node.addEventListener(k, f);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : text(child));
    }
    return node;
  }

  function pill(state, label) {
    const word = String(state || 'unknown');
    return el('span', { class: 'pill s-' + word.replace(/[^a-z_]/g, '') }, label === undefined ? word : label);
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // ------------------------------------------------------------------ time

  function relative(ts) {
    const at = Date.parse(ts);
    if (Number.isNaN(at)) return '';
    const seconds = Math.round((Date.now() - at) / 1000);
    const future = seconds < 0;
    const s = Math.abs(seconds);
    let phrase;
    if (s < 5) return future ? 'in a moment' : 'just now';
    if (s < 60) phrase = s + 's';
    else if (s < 3600) phrase = Math.floor(s / 60) + 'm';
    else if (s < 86400) phrase = Math.floor(s / 3600) + 'h';
    else phrase = Math.floor(s / 86400) + 'd';
    return future ? 'in ' + phrase : phrase + ' ago';
  }

  /** A time element that keeps saying how long ago `ts` was. */
  function when(ts) {
    return el('time', { class: 'rel', title: ts || '', data: { ts: ts || '' } }, relative(ts));
  }

  setInterval(() => {
    for (const node of document.querySelectorAll('time.rel')) node.textContent = relative(node.dataset.ts);
  }, 5000);

  // ------------------------------------------------------------------ topic patterns (SPEC §5)

  /** `*` matches one segment, `**` any number (zero or more); a lone `*` or `**` matches all. */
  function patternMatches(pattern, topic) {
    const p = pattern.trim();
    if (p === '' || p === '*' || p === '**') return true;
    const want = p.split('.');
    const have = topic.split('.');
    const go = (i, j) => {
      if (i === want.length) return j === have.length;
      if (want[i] === '**') {
        for (let k = j; k <= have.length; k++) if (go(i + 1, k)) return true;
        return false;
      }
      if (j === have.length) return false;
      return (want[i] === '*' || want[i] === have[j]) && go(i + 1, j + 1);
    };
    return go(0, 0);
  }

  // ------------------------------------------------------------------ ATP client

  const ATP_TIMEOUT_MS = 30000;
  const idPrefix = 'd' + Math.random().toString(36).slice(2, 8);

  const atp = {
    ws: null,
    nextId: 1,
    pending: new Map(),
    lastSeq: null, // the last seq received: a resubscription asks for what follows it
    backoff: 500,
    stopped: false,
    everOpen: false,

    connect() {
      const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
      const ws = new WebSocket(scheme + location.host + '/atp');
      this.ws = ws;
      setConnection('connecting');
      ws.addEventListener('open', () => {
        this.backoff = 500;
        this.everOpen = true;
        setConnection('live');
        this.subscribe();
        onConnected();
      });
      ws.addEventListener('message', (message) => this.onFrame(message.data));
      ws.addEventListener('close', (closed) => this.onClose(ws, closed));
    },

    onClose(ws, closed) {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const [, waiter] of this.pending) waiter.reject({ code: 'EUNAVAIL', message: 'connection closed' });
      this.pending.clear();
      setConnection('offline');
      if (this.stopped) return;
      if (closed.code === 1000 && closed.reason === 'logged out') {
        signedOut('You logged out.');
        return;
      }
      const delay = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 10000);
      setTimeout(() => this.reconnect(), delay);
    },

    /** Reconnects unless the session has ended (then `/` answers 401). */
    async reconnect() {
      try {
        const probe = await fetch('/', { cache: 'no-store', credentials: 'same-origin' });
        if (probe.status === 401) {
          signedOut('Your dashboard session has ended.');
          return;
        }
      } catch (_) {
        // The daemon is down: keep trying.
      }
      if (!this.stopped) this.connect();
    },

    send(frame) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    },

    /** Calls a public method (`domain.op`); resolves with its result body, rejects with {code, message}. */
    cmd(domain, op, body) {
      const id = idPrefix + '-' + this.nextId++;
      return new Promise((resolve, reject) => {
        if (!this.send({ type: 'cmd', id, domain, op, body: body || {} })) {
          reject({ code: 'EUNAVAIL', message: 'not connected' });
          return;
        }
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject({ code: 'ETIMEOUT', message: 'no reply within 30 s' });
        }, ATP_TIMEOUT_MS);
        this.pending.set(id, {
          resolve: (value) => { clearTimeout(timer); resolve(value); },
          reject: (error) => { clearTimeout(timer); reject(error); },
        });
      });
    },

    subscribe() {
      const frame = { type: 'subscribe', events: ['**'] };
      if (this.lastSeq !== null) frame.since_seq = this.lastSeq;
      this.send(frame);
    },

    onFrame(data) {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (_) {
        return;
      }
      switch (frame.type) {
        case 'reply': {
          const waiter = this.pending.get(frame.id);
          if (!waiter) return;
          this.pending.delete(frame.id);
          if (frame.ok) waiter.resolve(frame.body);
          else waiter.reject(frame.error || { code: 'EINTERNAL', message: 'failed' });
          return;
        }
        case 'subscribed':
          if (this.lastSeq === null) {
            this.lastSeq = Math.max(0, (frame.next_seq || 1) - 1);
            loadBacklog(this.lastSeq);
          }
          return;
        case 'event':
          if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
          this.lastSeq = frame.seq;
          onEvent(frame.body, true);
          return;
        case 'closing':
          if (frame.next_seq) this.lastSeq = frame.next_seq - 1;
          notice((frame.error && frame.error.message) || 'The daemon closed the connection.', false);
          return;
        default:
          return;
      }
    },
  };

  function setConnection(state) {
    const node = $('conn');
    node.className = 'pill pill-' + state;
    node.textContent = state;
    if (state === 'live') notice(null);
  }

  function notice(message, bad) {
    const node = $('notice');
    if (!message) {
      show(node, false);
      return;
    }
    node.className = bad ? 'notice bad' : 'notice';
    node.textContent = message;
    show(node, true);
  }

  function signedOut(message) {
    atp.stopped = true;
    setConnection('offline');
    notice(message + ' Run `aibus dashboard` on the daemon\'s machine for a new one-time link.', true);
    for (const button of document.querySelectorAll('main button')) button.disabled = true;
  }

  function errorText(error) {
    if (!error) return 'failed';
    return (error.code ? error.code + ': ' : '') + (error.message || '');
  }

  // ------------------------------------------------------------------ who is logged in

  const session = { user: null, role: null };

  function canDecide() {
    return session.role === 'operator' || session.role === 'admin';
  }

  async function loadSession() {
    try {
      const me = await atp.cmd('auth', 'whoami', {});
      session.user = me.user;
      session.role = me.role;
      $('who').textContent = me.user + ' · ' + me.role;
    } catch (error) {
      $('who').textContent = '';
    }
  }

  // ------------------------------------------------------------------ the event stream

  const MAX_EVENTS = 1000;
  const stream = { events: [], bySeq: new Map(), paused: false, held: 0, selectedSeq: null };

  function namespaceClass(topic) {
    const first = String(topic).split('.')[0];
    return ['system', 'agent', 'action', 'exec', 'request'].includes(first) ? 't-' + first : '';
  }

  function preview(payload) {
    const json = JSON.stringify(payload === undefined ? {} : payload);
    return json.length > 300 ? json.slice(0, 300) + '…' : json;
  }

  function eventRow(event, fresh) {
    const row = el(
      'tr',
      {
        class: (fresh ? 'fresh' : '') + (event.seq === stream.selectedSeq ? ' selected' : ''),
        data: { seq: event.seq, topic: event.topic },
        on: { click: () => selectEvent(event) },
      },
      el('td', { class: 'c-seq' }, event.seq),
      el('td', { class: 'c-time' }, when(event.ts)),
      el('td', { class: 'c-topic ' + namespaceClass(event.topic) }, event.topic),
      el('td', { class: 'c-source' }, event.source || ''),
      el('td', {}, el('span', { class: 'preview' }, preview(event.payload))),
    );
    // Highlighted once on arrival; the class goes so a tab shown later does not replay it.
    row.addEventListener('animationend', () => row.classList.remove('fresh'));
    return row;
  }

  function filterPattern() {
    return $('filter').value;
  }

  function renderStream() {
    const pattern = filterPattern();
    const rows = [];
    for (let i = stream.events.length - 1; i >= 0; i--) {
      const event = stream.events[i];
      if (patternMatches(pattern, event.topic)) rows.push(eventRow(event, false));
    }
    $('stream').replaceChildren(...rows);
    updateStreamCount(rows.length);
  }

  function updateStreamCount(shown) {
    const held = stream.held ? ' · ' + stream.held + ' new while paused' : '';
    $('stream-count').textContent = shown + ' shown of ' + stream.events.length + held;
    show($('stream-empty'), shown === 0);
  }

  function remember(event) {
    if (stream.bySeq.has(event.seq)) return false;
    stream.bySeq.set(event.seq, event);
    // Mostly appends; the backlog may arrive after live events, so keep seq order.
    let at = stream.events.length;
    while (at > 0 && stream.events[at - 1].seq > event.seq) at--;
    stream.events.splice(at, 0, event);
    while (stream.events.length > MAX_EVENTS) stream.bySeq.delete(stream.events.shift().seq);
    return true;
  }

  function onEvent(event, live) {
    if (!event || typeof event.seq !== 'number') return;
    if (!remember(event)) return;
    if (live) reactTo(event);
    if (stream.paused) {
      stream.held++;
      updateStreamCount($('stream').children.length);
      return;
    }
    if (!patternMatches(filterPattern(), event.topic)) return;
    const body = $('stream');
    const newest = body.firstElementChild;
    if (!newest || Number(newest.dataset.seq) < event.seq) {
      body.insertBefore(eventRow(event, live), newest);
      while (body.children.length > MAX_EVENTS) body.lastElementChild.remove();
      updateStreamCount(body.children.length);
    } else {
      renderStream();
    }
  }

  async function loadBacklog(lastSeq) {
    if (lastSeq <= 0) return;
    try {
      const page = await atp.cmd('events', 'list', { after_seq: Math.max(0, lastSeq - 200), limit: 200 });
      for (const event of page.events || []) if (event.seq <= lastSeq) remember(event);
      renderStream();
    } catch (error) {
      notice('Could not load recent events: ' + errorText(error), false);
    }
  }

  async function selectEvent(event) {
    stream.selectedSeq = event.seq;
    for (const row of $('stream').querySelectorAll('tr.selected')) row.classList.remove('selected');
    const row = $('stream').querySelector('tr[data-seq="' + event.seq + '"]');
    if (row) row.classList.add('selected');
    showDetail(event);
    $('trace-hint').textContent = 'Trace ' + (event.trace_id || '') + ' — loading…';
    try {
      const trace = await atp.cmd('events', 'trace', { trace_id: event.trace_id });
      renderTrace(trace.events || [], event);
    } catch (error) {
      $('trace-hint').textContent = 'Trace unavailable: ' + errorText(error);
      $('trace-list').replaceChildren();
    }
  }

  function renderTrace(events, selected) {
    $('trace-hint').textContent = 'Trace ' + (selected.trace_id || '') + ' · ' + events.length + ' events';
    const items = events.map((event) =>
      el(
        'li',
        {
          class: 'depth-' + Math.min(event.depth || 0, 6) + (event.seq === selected.seq ? ' selected' : ''),
          data: { seq: event.seq },
          on: {
            click: (clicked) => {
              for (const item of $('trace-list').children) item.classList.remove('selected');
              clicked.currentTarget.classList.add('selected');
              showDetail(event);
            },
          },
        },
        el('span', { class: 'depth' }, '↳'.repeat(Math.min(event.depth || 0, 6))),
        el('span', { class: 'mono ' + namespaceClass(event.topic) }, event.topic),
        el('span', { class: 'muted' }, '#' + event.seq),
        event.status && event.status !== 'stored' ? pill(event.status) : null,
        el('span', { class: 'muted' }, when(event.ts)),
      ),
    );
    $('trace-list').replaceChildren(...items);
  }

  function showDetail(event) {
    const title = $('detail-title');
    title.textContent = event.topic + ' · ' + event.id;
    show(title, true);
    const json = $('detail-json');
    json.textContent = JSON.stringify(event, null, 2);
    show(json, true);
  }

  // ------------------------------------------------------------------ reacting to live events

  const timers = new Map();

  /** Runs `view`'s refresh once shortly after a burst of events that concern it. */
  function refreshSoon(view, delay) {
    if (timers.has(view)) return;
    timers.set(
      view,
      setTimeout(() => {
        timers.delete(view);
        refresh(view);
      }, delay || 150),
    );
  }

  function reactTo(event) {
    const topic = event.topic;
    if (topic.startsWith('action.')) refreshSoon('approvals');
    else if (topic.startsWith('request.')) refreshSoon('requests');
    else if (topic === 'system.service') refreshSoon('health', 300);
    else if (topic.startsWith('knowledge.') && activeTab() === 'knowledge') refreshSoon('knowledge', 500);
  }

  // ------------------------------------------------------------------ approvals

  function commandLine(action) {
    const p = action.params || {};
    if (Array.isArray(p.argv)) return p.argv.map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : JSON.stringify(arg))).join(' ');
    if (typeof p.command === 'string') return p.command;
    if (p.url) return (p.method || 'GET') + ' ' + p.url;
    if (p.path) return p.path;
    return JSON.stringify(p, null, 2);
  }

  const agentNames = new Map();

  function agentLabel(id) {
    if (!id) return 'owner';
    return agentNames.get(id) || id;
  }

  function approvalCard(action) {
    const reason = el('input', { type: 'text', placeholder: 'reason (optional)' });
    const error = el('div', { class: 'error' });
    const decide = async (op, button) => {
      for (const b of card.querySelectorAll('button')) b.disabled = true;
      error.textContent = '';
      const body = { id: action.id };
      if (op === 'deny' && reason.value.trim()) body.reason = reason.value.trim();
      try {
        await atp.cmd('actions', op, body);
        card.remove();
        updateApprovalsCount();
        refreshSoon('approvals');
      } catch (failure) {
        error.textContent = errorText(failure);
        for (const b of card.querySelectorAll('button')) b.disabled = !canDecide();
      }
    };
    const allowed = canDecide();
    const card = el(
      'article',
      { class: 'card', data: { actionId: action.id } },
      el('div', { class: 'card-head' }, el('span', { class: 'title' }, action.action_type), pill(action.status)),
      el('pre', { class: 'command' }, commandLine(action)),
      el(
        'div',
        { class: 'meta' },
        el('span', {}, 'agent ', agentLabel(action.agent_id)),
        el('span', {}, 'rule ', action.rule || ''),
        action.tainted ? el('span', { class: 'taint', title: 'descends from an untrusted topic' }, 'tainted') : null,
        el('span', {}, 'proposed ', when(action.created_at)),
        action.expires_at ? el('span', {}, 'expires ', when(action.expires_at)) : null,
        el('span', { class: 'mono' }, action.id),
      ),
      action.reason ? el('div', { class: 'muted' }, action.reason) : null,
      el(
        'div',
        { class: 'buttons' },
        el('button', { type: 'button', class: 'primary approve', disabled: !allowed, on: { click: (e) => decide('approve', e.currentTarget) } }, 'Approve'),
        el('button', { type: 'button', class: 'danger deny', disabled: !allowed, on: { click: (e) => decide('deny', e.currentTarget) } }, 'Deny'),
        reason,
      ),
      allowed ? null : el('div', { class: 'muted' }, 'Your role (' + (session.role || 'unknown') + ') may not decide.'),
      error,
    );
    return card;
  }

  function updateApprovalsCount() {
    const count = $('approvals').children.length;
    const badge = $('badge-approvals');
    badge.textContent = String(count);
    show(badge, count > 0);
    show($('approvals-empty'), count === 0);
  }

  async function loadApprovals() {
    try {
      const result = await atp.cmd('actions', 'pending', {});
      $('approvals').replaceChildren(...(result.actions || []).map(approvalCard));
    } catch (error) {
      $('approvals').replaceChildren(el('p', { class: 'warn' }, 'Approvals unavailable: ' + errorText(error)));
    }
    updateApprovalsCount();
  }

  // ------------------------------------------------------------------ human-input requests

  function requestCard(request) {
    const answer = el('input', { type: 'text', placeholder: 'your answer' });
    const error = el('div', { class: 'error' });
    const act = async (op) => {
      const body = { id: request.request_id };
      if (op === 'respond') {
        if (!answer.value.trim()) {
          error.textContent = 'Write an answer first.';
          return;
        }
        body.response_text = answer.value;
      }
      for (const b of card.querySelectorAll('button')) b.disabled = true;
      try {
        await atp.cmd('requests', op, body);
        card.remove();
        updateRequestsCount();
        refreshSoon('requests');
      } catch (failure) {
        error.textContent = errorText(failure);
        for (const b of card.querySelectorAll('button')) b.disabled = !canDecide();
      }
    };
    const allowed = canDecide();
    const card = el(
      'article',
      { class: 'card ' + (request.priority || ''), data: { requestId: request.request_id } },
      el('div', { class: 'card-head' }, el('span', { class: 'title' }, request.title), pill(request.priority, request.priority)),
      el('div', {}, request.question),
      request.context !== undefined && request.context !== null ? el('pre', { class: 'command' }, JSON.stringify(request.context, null, 2)) : null,
      el('div', { class: 'meta' }, el('span', {}, 'session ', request.session_id), el('span', {}, 'asked ', when(request.created_at))),
      el(
        'div',
        { class: 'buttons' },
        answer,
        el('button', { type: 'button', class: 'primary', disabled: !allowed, on: { click: () => act('respond') } }, 'Answer'),
        el('button', { type: 'button', class: 'ghost', disabled: !allowed, on: { click: () => act('dismiss') } }, 'Dismiss'),
      ),
      error,
    );
    return card;
  }

  function updateRequestsCount() {
    const count = $('requests').querySelectorAll('.card').length;
    const badge = $('badge-requests');
    badge.textContent = String(count);
    show(badge, count > 0);
    show($('requests-empty'), count === 0);
  }

  async function loadRequests() {
    try {
      const result = await atp.cmd('requests', 'list', { status: 'pending' });
      $('requests').replaceChildren(...(result.requests || []).map(requestCard));
    } catch (error) {
      $('requests').replaceChildren(el('p', { class: 'warn' }, 'Requests unavailable: ' + errorText(error)));
    }
    updateRequestsCount();
  }

  // ------------------------------------------------------------------ agents and rules

  function enabledPill(enabled) {
    return pill(enabled ? 'enabled' : 'disabled');
  }

  async function loadAgents() {
    try {
      const [agents, rules] = await Promise.all([atp.cmd('agents', 'list', {}), atp.cmd('rules', 'list', {})]);
      for (const agent of agents.agents || []) agentNames.set(agent.id, agent.name);
      $('agents').replaceChildren(
        ...(agents.agents || []).map((agent) =>
          el(
            'tr',
            { data: { agentId: agent.id } },
            el('td', { title: agent.id }, el('strong', {}, agent.name), agent.description ? el('div', { class: 'muted' }, agent.description) : null),
            el('td', {}, agent.kind),
            el('td', { class: 'mono' }, agent.kind === 'command' ? (agent.command || []).join(' ') : (agent.provider || '') + ' / ' + (agent.model || '')),
            el('td', {}, enabledPill(agent.enabled), agent.reactive === false ? el('span', { class: 'muted' }, ' observer') : null),
            el('td', {}, agent.allowed_actions ? agent.allowed_actions.join(', ') : 'all'),
            el('td', {}, when(agent.updated_at)),
          ),
        ),
      );
      $('rules').replaceChildren(
        ...(rules.rules || []).map((rule) =>
          el(
            'tr',
            { data: { ruleId: rule.id } },
            el('td', { title: rule.id }, rule.name),
            el('td', { class: 'mono' }, rule.topic_pattern),
            el('td', {}, agentLabel(rule.agent_id)),
            el('td', {}, rule.priority_order),
            el('td', {}, enabledPill(rule.enabled)),
            el('td', {}, when(rule.updated_at)),
          ),
        ),
      );
      show($('agents-empty'), !(agents.agents || []).length);
      show($('rules-empty'), !(rules.rules || []).length);
    } catch (error) {
      $('agents').replaceChildren(el('tr', {}, el('td', { class: 'warn' }, 'Agents unavailable: ' + errorText(error))));
    }
  }

  // ------------------------------------------------------------------ producers

  async function loadProducers() {
    const down = $('producers-down');
    try {
      const result = await atp.cmd('producers', 'list', {});
      show(down, false);
      const producers = result.producers || [];
      $('producers').replaceChildren(
        ...producers.map((producer) => {
          const capability = producer.capability || {};
          const available = producer.available !== undefined ? producer.available : capability.available;
          const why = producer.reason || capability.reason || '';
          return el(
            'tr',
            {},
            el('td', {}, el('strong', {}, producer.name)),
            el('td', { class: 'mono' }, producer.topic || ''),
            el('td', {}, enabledPill(producer.enabled)),
            el('td', {}, pill(available ? 'available' : 'unavailable'), why ? el('div', { class: 'muted' }, why) : null),
          );
        }),
      );
      show($('producers-empty'), producers.length === 0);
    } catch (error) {
      $('producers').replaceChildren();
      show($('producers-empty'), false);
      down.textContent = error && error.code === 'EUNAVAIL' ? 'producers service not running' : 'Producers unavailable: ' + errorText(error);
      show(down, true);
    }
  }

  // ------------------------------------------------------------------ knowledge and memories

  function valueText(value) {
    return typeof value === 'string' ? value : JSON.stringify(value);
  }

  async function loadKnowledge() {
    const prefix = $('knowledge-prefix').value.trim();
    const params = { limit: 500 };
    if (prefix) params.prefix = prefix;
    try {
      const result = await atp.cmd('knowledge', 'list', params);
      const facts = result.facts || [];
      $('knowledge').replaceChildren(
        ...facts.map((fact) =>
          el('tr', {}, el('td', { class: 'mono' }, fact.key), el('td', { class: 'mono' }, valueText(fact.value)), el('td', { class: 'muted' }, fact.source), el('td', {}, when(fact.updated_at))),
        ),
      );
      show($('knowledge-empty'), facts.length === 0);
    } catch (error) {
      $('knowledge').replaceChildren(el('tr', {}, el('td', { class: 'warn' }, 'Knowledge unavailable: ' + errorText(error))));
    }
  }

  async function loadMemories() {
    const query = $('memory-query').value.trim();
    try {
      const result = query ? await atp.cmd('memory', 'search', { query, limit: 100 }) : await atp.cmd('memory', 'list', { limit: 200 });
      const memories = result.memories || [];
      $('memories').replaceChildren(
        ...memories.map((memory) =>
          el(
            'tr',
            {},
            el('td', {}, memory.kind),
            el('td', { class: 'mono' }, memory.scope),
            el('td', {}, memory.content),
            el('td', {}, Number(memory.importance).toFixed(2)),
            el('td', { class: 'muted' }, (memory.tags || []).join(', ')),
            el('td', {}, when(memory.updated_at)),
          ),
        ),
      );
      show($('memories-empty'), memories.length === 0);
    } catch (error) {
      $('memories').replaceChildren(el('tr', {}, el('td', { class: 'warn' }, 'Memories unavailable: ' + errorText(error))));
    }
  }

  // ------------------------------------------------------------------ health

  async function loadHealth() {
    try {
      const status = await atp.cmd('system', 'status', {});
      $('version').textContent = 'version ' + status.version;
      $('services').replaceChildren(
        ...(status.services || []).map((service) =>
          el(
            'tr',
            { data: { service: service.name } },
            el('td', {}, el('strong', {}, service.name)),
            el('td', {}, pill(service.state)),
            el('td', { class: 'mono' }, service.pid === null || service.pid === undefined ? '—' : service.pid),
            el('td', {}, service.restarts),
            el('td', {}, when(service.since)),
          ),
        ),
      );
      const providers = (status.llm && status.llm.providers) || [];
      $('providers').replaceChildren(
        ...providers.map((provider) => {
          const reachable = provider.reachable === true;
          const details = Object.entries(provider)
            .filter(([key]) => key !== 'name' && key !== 'reachable')
            .map(([key, value]) => key + ': ' + valueText(value))
            .join(' · ');
          return el('tr', {}, el('td', {}, el('strong', {}, provider.name || '')), el('td', {}, pill(reachable ? 'ok' : 'unreachable', reachable ? 'reachable' : 'unreachable')), el('td', { class: 'muted' }, details));
        }),
      );
      show($('providers-empty'), providers.length === 0);
      const bus = status.bus || {};
      $('bus').replaceChildren(...Object.entries(bus).flatMap(([key, value]) => [el('dt', {}, key), el('dd', {}, valueText(value))]));
    } catch (error) {
      $('services').replaceChildren(el('tr', {}, el('td', { class: 'warn' }, 'Status unavailable: ' + errorText(error))));
    }
  }

  // ------------------------------------------------------------------ tabs and wiring

  const loaders = {
    approvals: loadApprovals,
    requests: loadRequests,
    agents: loadAgents,
    producers: loadProducers,
    knowledge: loadKnowledge,
    memories: loadMemories,
    health: loadHealth,
  };

  function refresh(view) {
    const loader = loaders[view];
    if (loader && atp.ws) loader();
  }

  function activeTab() {
    const active = document.querySelector('.tab.active');
    return active ? active.dataset.tab : 'events';
  }

  function selectTab(name) {
    if (!document.querySelector('.tab[data-tab="' + name + '"]')) name = 'events';
    for (const tab of document.querySelectorAll('.tab')) tab.classList.toggle('active', tab.dataset.tab === name);
    for (const panel of document.querySelectorAll('.panel')) panel.classList.toggle('active', panel.dataset.panel === name);
    if (location.hash !== '#' + name) history.replaceState(null, '', '#' + name);
    refresh(name);
  }

  async function onConnected() {
    await loadSession();
    // Agent names label approvals; the counts in the tab badges are always live.
    await loadAgents();
    loadApprovals();
    loadRequests();
    const tab = activeTab();
    if (tab !== 'approvals' && tab !== 'requests' && tab !== 'agents') refresh(tab);
  }

  function debounce(f, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(f, ms);
    };
  }

  document.addEventListener('DOMContentLoaded', () => {
    for (const tab of document.querySelectorAll('.tab')) tab.addEventListener('click', () => selectTab(tab.dataset.tab));
    for (const button of document.querySelectorAll('[data-refresh]')) button.addEventListener('click', () => refresh(button.dataset.refresh));
    $('filter').addEventListener('input', debounce(renderStream, 120));
    $('pause').addEventListener('click', () => {
      stream.paused = !stream.paused;
      $('pause').textContent = stream.paused ? 'Resume' : 'Pause';
      if (!stream.paused) {
        stream.held = 0;
        renderStream();
      }
    });
    $('clear').addEventListener('click', () => {
      stream.events = [];
      stream.bySeq.clear();
      renderStream();
    });
    $('knowledge-prefix').addEventListener('input', debounce(loadKnowledge, 250));
    $('memory-query').addEventListener('input', debounce(loadMemories, 250));
    $('logout').addEventListener('click', async () => {
      try {
        await atp.cmd('auth', 'logout', {});
      } catch (_) {
        // The server closes the connection right after its reply.
      }
      signedOut('You logged out.');
      if (atp.ws) atp.ws.close(1000, 'logged out');
    });
    setInterval(() => {
      if (activeTab() === 'health') refresh('health');
    }, 10000);
    const initial = location.hash.replace('#', '');
    selectTab(initial || 'events');
    atp.connect();
  });
})();
