// The example chat page of caddy-chatroom: plain JavaScript, no build step,
// no dependencies. It speaks only the chat protocol (docs/protocol.md), so it works
// unchanged against one Caddy or a cluster, and it ignores frame fields it
// does not know.
//
// Every text that came from the network is put into the page with
// textContent, never as HTML: names and messages are other people's input.
'use strict';

(() => {
  const DEFAULT_ROOM = 'lobby';
  const ROOM_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
  const MAX_NICK = 32;
  // The server's name rule: no control, format (bidirectional overrides,
  // zero-width characters), line or paragraph separator characters.
  const CONTROL_CHARS = /[\p{Cc}\p{Cf}\u2028\u2029]/u;
  // Reconnect delays grow from RETRY_BASE_MS to RETRY_MAX_MS; each one is
  // drawn from the upper half of its step, so that a room full of pages
  // does not come back in lockstep when the server restarts.
  const RETRY_BASE_MS = 500;
  const RETRY_MAX_MS = 30000;
  // Bounds on what a long-lived tab keeps.
  const MAX_LOG_ENTRIES = 500;
  const MAX_SEEN = 1000;
  const MAX_OLD_IDS = 50;
  const SEQ_PATTERN = /^[0-9]{1,20}$/;
  const NICK_STORAGE_KEY = 'chatroom.nick';

  const el = (id) => document.getElementById(id);
  const ui = {
    status: el('status'),
    statusText: el('status-text'),
    statusDetail: el('status-detail'),
    retryNow: el('retry-now'),
    room: el('room-name'),
    myId: el('my-id'),
    nickForm: el('nick-form'),
    nickInput: el('nick-input'),
    nickButton: el('nick-button'),
    nickNote: el('nick-note'),
    people: el('people'),
    count: el('online-count'),
    list: el('online-list'),
    bigNote: el('online-note'),
    log: el('log'),
    sendForm: el('send-form'),
    msgInput: el('msg-input'),
    sendButton: el('send-button'),
  };

  // Connection state.
  let socket = null;
  let open = false; // the current socket has received its welcome
  let connections = 0; // welcomes received since the page loaded
  let attempt = 0; // failed attempts since the last welcome
  let retryTimer = 0;
  let countdownTimer = 0;
  let retryAt = 0;

  // Room state.
  let myId = '';
  let myNick = storageGet(NICK_STORAGE_KEY);
  let nickLocked = false;
  const members = new Map(); // id -> nick ('' when unnamed), in arrival order
  // Ids whose name the server vouches for (the `user` setting): shown with
  // a check mark, apart from names people chose for themselves.
  const verified = new Set();
  // A room bigger than the server's presence_limit sends its size instead
  // of join and leave events, and lists only some members: roomSize is
  // that size, or 0 while the room gets full presence.
  let roomSize = 0;
  // Keys of the chat messages already shown, so that the history a server
  // replays after a reconnect is not shown twice.
  const seen = new Set();
  let replaying = false;
  // Resume: the highest seq of a chat message this page has received in its
  // room, sent as since on reconnecting, so that the server replays exactly
  // what came after it; and the ids this page had, whose messages in that
  // replay it shows already (as sent).
  let lastSeq = 0n;
  const oldIds = new Set();
  let resuming = false; // the current socket asked for a resume
  let unread = 0;

  const params = new URLSearchParams(location.search);
  let room = params.get('room') || DEFAULT_ROOM;
  let badRoom = '';
  if (!ROOM_PATTERN.test(room)) {
    badRoom = room;
    room = DEFAULT_ROOM;
  }
  ui.room.textContent = room;
  const baseTitle = room + ' · Chat';
  document.title = baseTitle;
  ui.nickInput.value = myNick;
  if (badRoom) {
    addNotice('"' + badRoom + '" is not a room name (1 to 64 letters, digits, dots, dashes or underscores): you are in ' + DEFAULT_ROOM + '.', 'error');
  }

  function socketURL() {
    const url = new URL(document.body.dataset.endpoint || '/ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('room', room);
    if (lastSeq > 0n) url.searchParams.set('since', String(lastSeq));
    return url.href;
  }

  // ---- connection ----------------------------------------------------

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    retryTimer = 0;
    if (socket) return;
    setStatus('connecting', connections ? 'Reconnecting…' : 'Connecting…');
    let ws;
    try {
      ws = new WebSocket(socketURL());
    } catch (err) {
      addNotice('Cannot open the chat connection: ' + err.message, 'error');
      scheduleRetry();
      return;
    }
    socket = ws;
    resuming = lastSeq > 0n;
    let welcomed = false;
    ws.onmessage = (ev) => {
      if (socket !== ws || typeof ev.data !== 'string') return;
      const frame = parseFrame(ev.data);
      if (!frame) return;
      if (!welcomed) {
        welcomed = true;
        onWelcome(frame);
        return;
      }
      onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (socket !== ws) return;
      socket = null;
      onClosed(ev, welcomed);
    };
  }

  function onClosed(ev, welcomed) {
    open = false;
    replaying = false;
    resuming = false;
    ui.sendButton.disabled = true;
    ui.people.classList.add('stale');
    if (welcomed) {
      let why = '';
      if (ev.code === 1001) why = ': the server is going away';
      else if (ev.code === 1009) why = ': a message was too large';
      else if (ev.reason) why = ': ' + ev.reason;
      addNotice('Disconnected' + why + '.', 'error');
    }
    scheduleRetry();
  }

  function scheduleRetry() {
    const step = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt);
    const delay = step / 2 + Math.random() * (step / 2);
    attempt = Math.min(attempt + 1, 16);
    retryAt = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    showCountdown();
    clearInterval(countdownTimer);
    countdownTimer = setInterval(showCountdown, 1000);
  }

  // The countdown ticks outside the live region, so that a screen reader
  // announces going offline once rather than every second.
  function showCountdown() {
    const seconds = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
    setStatus('offline', connections ? 'Offline' : 'Cannot connect', '· retrying in ' + seconds + ' s');
  }

  function setStatus(state, text, detail = '') {
    ui.status.dataset.state = state;
    ui.status.dataset.connections = String(connections);
    if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
    ui.statusDetail.textContent = detail;
    ui.retryNow.hidden = state !== 'offline';
  }

  function send(frame) {
    if (!socket || !open) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  ui.retryNow.addEventListener('click', () => {
    attempt = 0;
    connect();
  });
  window.addEventListener('online', () => {
    if (!socket) {
      attempt = 0;
      connect();
    }
  });

  // ---- frames ----------------------------------------------------------

  function parseFrame(data) {
    try {
      const frame = JSON.parse(data);
      return frame && typeof frame === 'object' && !Array.isArray(frame) ? frame : null;
    } catch {
      return null;
    }
  }

  // text returns a frame field as a string: ids and times are strings in
  // the protocol, but a lenient reader costs nothing.
  function text(v) {
    if (typeof v === 'string') return v;
    if (typeof v === 'number' && Number.isFinite(v)) return String(v);
    return '';
  }

  function onWelcome(frame) {
    // The seed's welcome had only a msg ("you are login as 23 id").
    const id = text(frame.id) || (/\blogin (?:as|at) (\S+?)(?: id)?$/.exec(text(frame.msg)) || [])[1] || '';
    if (!id && frame.msg_source !== 'server') {
      onFrame(frame); // not a welcome at all: show what it is
    }
    connections++;
    attempt = 0;
    open = true;
    myId = id;
    if (id) {
      oldIds.add(id);
      if (oldIds.size > MAX_OLD_IDS) oldIds.delete(oldIds.values().next().value);
    }
    ui.myId.textContent = id ? '#' + id : 'connected';
    const serverNick = text(frame.user) || text(frame.nick);
    verified.clear();
    if (serverNick) {
      // The server names us (the `user` setting): the name is not ours to change.
      myNick = serverNick;
      if (text(frame.user) && id) verified.add(id);
      lockNick();
    } else if (myNick && !nickLocked) {
      send({ nick: myNick });
    }
    members.clear();
    if (myId) members.set(myId, myNick);
    roomSize = 0;
    renderPeople();
    ui.people.classList.remove('stale');
    ui.sendButton.disabled = false;
    setStatus('open', 'Connected');
    if (connections > 1) {
      replaying = true;
      addNotice('Reconnected' + (id ? ' as #' + id : '') + '.', 'good');
    }
  }

  function onFrame(frame) {
    if (frame.error !== undefined) {
      onError(frame);
    } else if (frame.from_id !== undefined) {
      onChat(frame);
    } else if (frame.event === 'online') {
      onOnline(frame);
    } else if (frame.event === 'resumed') {
      onResumed(frame);
    } else if (frame.event === 'count') {
      roomSize = parseCount(frame.count);
      renderPeople();
    } else if (frame.event === 'join' || frame.event === 'leave' || frame.event === 'nick') {
      replaying = false;
      resuming = false;
      onPresence(frame);
    } else if (text(frame.msg)) {
      // A server notice this page does not know: show its text.
      addNotice(text(frame.msg));
    }
  }

  function onOnline(frame) {
    if (!Array.isArray(frame.online)) return;
    roomSize = parseCount(frame.count);
    members.clear();
    if (myId) members.set(myId, myNick);
    for (const id of [...verified]) if (id !== myId) verified.delete(id);
    for (const m of frame.online) {
      const id = m && text(m.id);
      if (!id || id === myId) continue;
      const user = text(m.user);
      members.set(id, user || text(m.nick));
      if (user) verified.add(id);
    }
    renderPeople();
  }

  // parseCount reads a room size the server sent as a decimal string;
  // anything else (absent, malformed, absurd) is 0: full presence.
  function parseCount(v) {
    const s = text(v);
    return /^[0-9]{1,9}$/.test(s) ? Number(s) : 0;
  }

  function onPresence(frame) {
    const id = text(frame.id);
    if (!id || id === myId) return;
    const user = text(frame.user);
    const nick = user || text(frame.nick);
    if (frame.event === 'join') {
      members.set(id, nick);
      if (user) verified.add(id);
      addNotice(displayName(id, nick) + ' joined');
    } else if (frame.event === 'leave') {
      const name = displayName(id, nick || members.get(id));
      members.delete(id);
      verified.delete(id);
      addNotice(name + ' left');
    } else {
      const before = displayName(id, members.get(id));
      members.set(id, nick);
      if (user) verified.add(id);
      else verified.delete(id);
      addNotice(before + ' is now ' + displayName(id, nick));
    }
    renderPeople();
  }

  function onChat(frame) {
    const id = text(frame.from_id);
    const msg = text(frame.msg);
    if (!msg) return;
    const time = text(frame.msg_time);
    const key = 'in|' + id + '|' + time + '|' + msg;
    const seq = text(frame.seq);
    if (seq) {
      // A message has one seq everywhere: one that arrives again (a resume
      // on an instance that had not yet received it, then live) is shown
      // once.
      const seqKey = 'seq|' + id + '|' + seq;
      if (seen.has(seqKey)) return;
      remember(seqKey);
    }
    noteSeq(seq);
    if (replaying && resuming) {
      // A resume replays what came after our last seq: what we said
      // ourselves before the drop (shown already, as sent, under an old
      // id) and what others said meanwhile. The seen check covers a
      // server that replays its history instead.
      if (oldIds.has(id) || seen.has(key)) return;
    } else if (replaying) {
      // History replayed after a reconnect starts with what this page
      // already shows; the first message it has not shown ends the overlap.
      if (seen.has(key) || seen.has('out|' + id + '|' + msg)) return;
      replaying = false;
    }
    remember(key);
    const user = text(frame.from_user);
    const nick = user || text(frame.from_nick) || (members.has(id) ? members.get(id) : '');
    addMessage({ id, nick, verified: user !== '', msg, date: parseTime(time), mine: false });
    if (document.hidden) {
      unread++;
      document.title = '(' + unread + ') ' + baseTitle;
    }
  }

  function noteSeq(seq) {
    if (!SEQ_PATTERN.test(seq)) return;
    const n = BigInt(seq);
    if (n > lastSeq) lastSeq = n;
  }

  // onResumed ends the replay of a resume. complete false: some messages
  // of the time away are no longer held by the server.
  function onResumed(frame) {
    replaying = false;
    resuming = false;
    if (frame.complete !== true) {
      addNotice('Some messages sent while you were away are no longer available.', 'error');
    }
  }

  function onError(frame) {
    const code = text(frame.error);
    const reason = text(frame.msg) || code || 'refused';
    if (code === 'nick_locked') {
      lockNick();
      showNickNote(reason, true);
      return;
    }
    if (code === 'bad_nick') {
      // The page assumed the rename worked: take it back.
      myNick = '';
      storageSet(NICK_STORAGE_KEY, '');
      if (myId) members.set(myId, '');
      renderPeople();
      showNickNote('Name refused: ' + reason, true);
      addNotice('Your name was refused: ' + reason, 'error');
      return;
    }
    if (code === 'rate_limited') {
      addNotice('Not delivered (too many messages at once): ' + reason, 'error');
      return;
    }
    addNotice('The server refused a message: ' + reason, 'error');
  }

  function parseTime(s) {
    const seconds = Number(s);
    return s !== '' && Number.isFinite(seconds) && seconds > 0 ? new Date(seconds * 1000) : new Date();
  }

  function remember(key) {
    seen.add(key);
    if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value);
  }

  // ---- sending -----------------------------------------------------------

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const msg = ui.msgInput.value;
    if (!msg.trim()) return;
    if (!send({ msg })) {
      addNotice('Not connected: your message is still in the box.', 'error');
      return;
    }
    // The server does not echo our own messages: show them as sent.
    remember('out|' + myId + '|' + msg);
    addMessage({ id: myId, nick: myNick, verified: verified.has(myId), msg, date: new Date(), mine: true });
    ui.msgInput.value = '';
    ui.msgInput.focus();
  });

  ui.nickForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (nickLocked) return;
    const nick = ui.nickInput.value.trim();
    const problem = nickProblem(nick);
    if (problem) {
      showNickNote(problem, true);
      return;
    }
    ui.nickInput.value = nick;
    if (nick === myNick) {
      showNickNote('That is already your name.', false);
      return;
    }
    myNick = nick;
    storageSet(NICK_STORAGE_KEY, nick);
    if (send({ nick })) {
      // Renames go to the others only: success is assumed unless an error
      // frame (bad_nick, nick_locked) says otherwise.
      if (myId) members.set(myId, nick);
      renderPeople();
      addNotice('You are now ' + nick);
      showNickNote('', false);
    } else {
      showNickNote('Saved: it is used when the chat reconnects.', false);
    }
  });

  function nickProblem(nick) {
    if (!nick) return 'Type a name first.';
    if ([...nick].length > MAX_NICK) return 'At most ' + MAX_NICK + ' characters.';
    if (CONTROL_CHARS.test(nick)) return 'No control or invisible formatting characters, please.';
    return '';
  }

  function lockNick() {
    nickLocked = true;
    ui.nickInput.value = myNick;
    ui.nickInput.readOnly = true;
    ui.nickButton.disabled = true;
    showNickNote('Your name is set by the server.', false);
  }

  function showNickNote(message, isError) {
    ui.nickNote.textContent = message;
    ui.nickNote.classList.toggle('error', isError);
  }

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      unread = 0;
      document.title = baseTitle;
    }
  });

  // ---- rendering -------------------------------------------------------

  // displayName is how a member is named in notices: the nick when there
  // is one, else the id.
  function displayName(id, nick) {
    return nick || '#' + id;
  }

  // hue gives each id a stable colour, so that two people of the same name
  // still look different. The golden angle spreads neighbouring ids (12,
  // 13, ...) far apart on the colour wheel.
  function hue(id) {
    let h = 0;
    for (const ch of id) h = (h * 31 + ch.codePointAt(0)) % 1000003;
    return String(Math.round((h * 137.508) % 360));
  }

  function renderPeople() {
    const items = [];
    for (const [id, nick] of members) {
      const li = document.createElement('li');
      li.dataset.id = id;
      li.style.setProperty('--hue', hue(id));
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = nick || '#' + id;
      li.append(name);
      if (verified.has(id)) li.append(verifiedMark());
      else if (nick) name.title = 'a name chosen by this person, not verified';
      if (nick) li.append(tag('#' + id, 'id'));
      if (id === myId) {
        li.classList.add('self');
        li.append(tag('you', 'you'));
      }
      items.push(li);
    }
    ui.list.replaceChildren(...items);
    if (roomSize > 0) {
      // A big room: its size, and the few members the server listed.
      const size = roomSize.toLocaleString('en-US');
      ui.count.textContent = size;
      ui.bigNote.textContent = `${size} online; showing ${members.size.toLocaleString('en-US')}`;
      ui.people.dataset.big = 'true';
    } else {
      ui.count.textContent = String(members.size);
      ui.bigNote.textContent = '';
      delete ui.people.dataset.big;
    }
  }

  // verifiedMark marks a name the server vouches for (the `user` setting),
  // so that a chosen nick of the same spelling cannot pass for it.
  function verifiedMark() {
    const mark = tag('✓', 'verified');
    mark.setAttribute('role', 'img');
    mark.setAttribute('aria-label', 'verified name');
    mark.title = 'verified: this name was set by the server, not chosen';
    return mark;
  }

  function tag(text, className) {
    const span = document.createElement('span');
    span.className = className;
    span.textContent = text;
    return span;
  }

  function timeElement(date) {
    const t = document.createElement('time');
    t.dateTime = date.toISOString();
    t.title = date.toLocaleString();
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    const hm = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    t.textContent = sameDay ? hm : date.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + hm;
    return t;
  }

  function addMessage({ id, nick, verified: isVerified, msg, date, mine }) {
    const li = document.createElement('li');
    li.className = mine ? 'msg mine' : 'msg';
    li.style.setProperty('--hue', hue(id || '?'));
    const meta = document.createElement('div');
    meta.className = 'meta';
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = mine ? 'You' : nick || '#' + id;
    meta.append(who);
    if (isVerified) meta.append(verifiedMark());
    if (!mine && nick && id) meta.append(tag('#' + id, 'id'));
    meta.append(timeElement(date));
    const body = document.createElement('p');
    body.className = 'text';
    body.textContent = msg;
    li.append(meta, body);
    append(li, mine);
  }

  function addNotice(message, kind) {
    const li = document.createElement('li');
    li.className = 'notice' + (kind ? ' ' + kind : '');
    li.textContent = message;
    append(li, false);
  }

  function append(li, scroll) {
    const log = ui.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    log.append(li);
    while (log.childElementCount > MAX_LOG_ENTRIES) log.firstElementChild.remove();
    if (scroll || atBottom) log.scrollTop = log.scrollHeight;
  }

  // ---- storage -----------------------------------------------------------

  // Storage can be unavailable (privacy settings, sandboxed frames): the
  // name then lasts as long as the page.
  function storageGet(key) {
    try {
      return localStorage.getItem(key) || '';
    } catch {
      return '';
    }
  }

  function storageSet(key, value) {
    try {
      if (value) localStorage.setItem(key, value);
      else localStorage.removeItem(key);
    } catch {
      // see storageGet
    }
  }

  connect();
})();
