// Browser end-to-end tests of the example chat page (example/public), run by
// browser_test.go against a real Caddy built with the module:
//
//   CHATROOM_URL           the site, e.g. http://127.0.0.1:41234 (required)
//   CHATROOM_CONTROL_URL   POST <url>/restart restarts that Caddy on the same
//                          port and answers once it serves again (the
//                          reconnect test is skipped without it)
//   CHATROOM_SCREENSHOT_DIR  where to write screenshot.png (two tabs chatting)
//                          and screenshot-phone.png (390 px wide); none when unset
//   CHATROOM_CHROMIUM      the browser, default /usr/bin/chromium
//   CHATROOM_COMPRESSION   1 when the server has `compression` on: the
//                          compression test then runs and checks that
//                          Chromium negotiated permessage-deflate
//
// Run with: node --test --test-reporter=spec e2e/chat.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.CHATROOM_URL;
const CONTROL = process.env.CHATROOM_CONTROL_URL || '';
const SHOTS = process.env.CHATROOM_SCREENSHOT_DIR || '';
const COMPRESSION = process.env.CHATROOM_COMPRESSION === '1';
// Bounds every wait on the page: long enough for a loaded 2-core machine
// running Caddy with the race detector.
const WAIT = 20_000;
// The reconnect test waits for the page's backoff after a restart.
const WAIT_RECONNECT = 45_000;
const TEST_TIMEOUT = 120_000;

if (!BASE) throw new Error('CHATROOM_URL is not set: run this through `go test -run Browser` or set it to a running example');

let browser;
let roomSeq = 0;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHATROOM_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
    ],
  });
});

after(async () => {
  await browser?.close();
});

// uniqueRoom keeps the tests' rooms apart on the one server.
function uniqueRoom(name) {
  roomSeq++;
  return `${name}-${process.pid}-${roomSeq}`;
}

// openChat opens the page in a fresh browser context (its own storage, as a
// different person would have) and waits until it is connected.
async function openChat(room, { width = 760, height = 560, user = '' } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  if (user) {
    // The test site takes `user` from this cookie (see browser_test.go).
    await context.addCookies([{ name: 'chatuser', value: user, url: BASE }]);
  }
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    // Chromium itself logs each refused WebSocket attempt while the server
    // is down; that is the reconnect at work, not a fault of the page.
    if (msg.type() === 'error' && !/^WebSocket connection to .* failed/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  await page.goto(`${BASE}/?room=${encodeURIComponent(room)}`, { timeout: WAIT });
  await awaitConnected(page, 1);
  const id = (await page.locator('#my-id').textContent()).replace(/^#/, '');
  assert.match(id, /^\d+$/, 'the page shows its id');
  return { context, page, id, problems };
}

// awaitConnected waits until the page has been welcomed `connections` times
// since it loaded, and is connected now.
async function awaitConnected(page, connections, timeout = WAIT) {
  await page.waitForFunction(
    (n) => {
      const s = document.getElementById('status');
      return s.dataset.state === 'open' && Number(s.dataset.connections) >= n;
    },
    connections,
    { timeout },
  );
}

async function send(page, text) {
  await page.locator('#msg-input').fill(text);
  await page.locator('#msg-input').press('Enter');
}

async function setNick(page, nick) {
  await page.getByLabel('Your name').fill(nick);
  await page.getByLabel('Your name').press('Enter');
}

// awaitMessage waits for a chat message whose text is exactly `text` and
// returns how the page shows it.
async function awaitMessage(page, text, timeout = WAIT) {
  const found = await page.waitForFunction(
    (t) => {
      for (const li of document.querySelectorAll('#log li.msg')) {
        if (li.querySelector('.text').textContent === t) {
          return {
            from: li.querySelector('.from').textContent,
            id: li.querySelector('.id')?.textContent ?? '',
            mine: li.classList.contains('mine'),
            time: li.querySelector('time')?.textContent ?? '',
            verified: li.querySelector('.meta .verified')?.getAttribute('aria-label') ?? '',
          };
        }
      }
      return null;
    },
    text,
    { timeout },
  );
  return found.jsonValue();
}

// awaitNotice waits for an event line containing `text`.
async function awaitNotice(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#log li.notice')].some((li) => li.textContent.includes(t)),
    text,
    { timeout: WAIT },
  );
}

// awaitOnline waits until the presence list has exactly `ids` (in any
// order) and returns the names it shows and the count.
async function awaitOnline(page, ids) {
  try {
    const got = await page.waitForFunction(
      (want) => {
        const items = [...document.querySelectorAll('#online-list li')];
        const have = items.map((li) => li.dataset.id).sort();
        if (JSON.stringify(have) !== JSON.stringify([...want].sort())) return null;
        return {
          count: document.getElementById('online-count').textContent,
          names: Object.fromEntries(items.map((li) => [li.dataset.id, li.querySelector('.name').textContent])),
          verified: Object.fromEntries(items.map((li) => [li.dataset.id, li.querySelector('.verified')?.getAttribute('aria-label') ?? ''])),
        };
      },
      ids,
      { timeout: WAIT },
    );
    return got.jsonValue();
  } catch (err) {
    const have = await page.locator('#online-list li').evaluateAll((lis) => lis.map((li) => li.textContent));
    throw new Error(`online list never became ${JSON.stringify(ids)}; it shows ${JSON.stringify(have)}: ${err.message}`);
  }
}

// openDroppable opens room in a new page of context whose WebSocket goes
// through Playwright, which passes frames on (recording those from the
// server) and can cut the connection: routes holds each connection's URL,
// frames and ends; every connection after the first waits for openGate().
async function openDroppable(context, room) {
  const page = await context.newPage();
  const routes = [];
  let openGate;
  const gate = new Promise((resolve) => { openGate = resolve; });
  await page.routeWebSocket(/\/ws/, async (ws) => {
    const route = { ws, url: new URL(ws.url()), frames: [] };
    routes.push(route);
    if (routes.length > 1) await gate; // hold the reconnect until the test says
    route.server = ws.connectToServer();
    route.server.onMessage((data) => {
      route.frames.push(JSON.parse(data));
      ws.send(data);
    });
  });
  await page.goto(`${BASE}/?room=${encodeURIComponent(room)}`, { timeout: WAIT });
  await awaitConnected(page, 1);
  const id = (await page.locator('#my-id').textContent()).replace(/^#/, '');
  // drop cuts the first connection as a network would, and waits for the
  // page to notice.
  const drop = async () => {
    await routes[0].ws.close({ code: 4000, reason: 'test drop' });
    routes[0].server.close();
    await awaitNotice(page, 'Disconnected');
  };
  return { page, routes, openGate, id, drop };
}

function assertNoProblems(...chats) {
  for (const c of chats) assert.deepEqual(c.problems, [], 'no script errors on the page');
}

// sideBySide composes screenshots of several pages into one picture, drawn
// by the browser itself so that no image library is needed.
async function sideBySide(shots, captions) {
  const context = await browser.newContext({ viewport: { width: 400, height: 300 } });
  const page = await context.newPage();
  const figures = shots
    .map((png, i) => `<figure><figcaption>${captions[i]}</figcaption><img src="data:image/png;base64,${png.toString('base64')}"></figure>`)
    .join('');
  await page.setContent(`<!doctype html><style>
    body { margin: 0; background: #d9dde4; font: 14px system-ui, sans-serif; color: #39404d; }
    main { display: inline-flex; gap: 24px; padding: 20px 24px 24px; }
    figure { margin: 0; }
    figcaption { margin: 0 0 8px 4px; font-weight: 600; }
    img { display: block; border-radius: 10px; box-shadow: 0 2px 10px rgba(20, 30, 50, .18); }
  </style><main>${figures}</main>`);
  await page.waitForFunction(() => [...document.images].every((img) => img.complete && img.naturalWidth > 0), null, { timeout: WAIT });
  const png = await page.locator('main').screenshot({ timeout: WAIT });
  await context.close();
  return png;
}

async function saveShot(name, png) {
  if (!SHOTS) return;
  await mkdir(SHOTS, { recursive: true });
  await writeFile(path.join(SHOTS, name), png);
}

test('two browser contexts chat both ways', { timeout: TEST_TIMEOUT }, async () => {
  // The pictures for the README show the default room; a fresh server
  // (as browser_test.go starts) has no history in it.
  const room = SHOTS ? 'lobby' : uniqueRoom('both-ways');
  const alice = await openChat(room);
  const bob = await openChat(room);
  try {
    await setNick(alice.page, 'Alice');
    await setNick(bob.page, 'Bob');
    await awaitOnline(alice.page, [alice.id, bob.id]);
    const names = await awaitOnline(bob.page, [alice.id, bob.id]);
    await bob.page.waitForFunction((id) => document.querySelector(`#online-list li[data-id="${id}"] .name`)?.textContent === 'Alice', alice.id, { timeout: WAIT });
    assert.equal(names.count, '2');

    const conversation = [
      [alice, bob, 'Hi Bob! Is the new chat page working for you?'],
      [bob, alice, 'Yes, I joined from the other tab. It reconnects by itself, too.'],
      [alice, bob, 'Try sending <b>HTML</b>: it shows up as plain text.'],
      [bob, alice, 'It does. Literal text, and nothing ran.'],
    ];
    for (const [from, to, text] of conversation) {
      await send(from.page, text);
      const mine = await awaitMessage(from.page, text);
      assert.equal(mine.mine, true, 'the sender sees its own message as sent');
      assert.equal(mine.from, 'You');
      const theirs = await awaitMessage(to.page, text);
      assert.equal(theirs.mine, false);
      assert.equal(theirs.from, from === alice ? 'Alice' : 'Bob', 'the receiver sees who sent it');
      assert.equal(theirs.id, `#${from.id}`);
      assert.match(theirs.time, /\d{1,2}.\d{2}/, 'a local time is shown');
    }
    // The server never echoes: each text is shown once on each side.
    for (const c of [alice, bob]) {
      const counts = await c.page.locator('#log li.msg .text').allTextContents();
      assert.deepEqual(counts, conversation.map(([, , text]) => text));
    }
    await bob.page.locator('#msg-input').focus();
    await alice.page.locator('#msg-input').focus();

    const shots = [await alice.page.screenshot(), await bob.page.screenshot()];
    await saveShot('screenshot.png', await sideBySide(shots, ['Tab 1 · Alice', 'Tab 2 · Bob']));

    const phone = await openChat(room, { width: 390, height: 760 });
    try {
      await setNick(phone.page, 'Carol');
      await awaitOnline(phone.page, [alice.id, bob.id, phone.id]);
      await send(alice.page, 'Welcome, Carol!');
      await awaitMessage(phone.page, 'Welcome, Carol!');
      await send(phone.page, 'Hello from my phone');
      await awaitMessage(alice.page, 'Hello from my phone');
      const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.equal(overflow, 0, 'nothing sticks out sideways at phone width');
      await saveShot('screenshot-phone.png', await phone.page.screenshot());
      assertNoProblems(phone);
    } finally {
      await phone.context.close();
    }
    assertNoProblems(alice, bob);
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});

test('with compression on, Chromium negotiates permessage-deflate and long messages and history arrive intact', { timeout: TEST_TIMEOUT, skip: COMPRESSION ? false : 'CHATROOM_COMPRESSION is not 1' }, async () => {
  const room = uniqueRoom('deflate');
  const alice = await openChat(room);
  const bob = await openChat(room);
  try {
    // The page's own socket is out of reach: a second one from the same
    // page shows what Chromium and the server agreed on.
    const extensions = await alice.page.evaluate((r) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws?room=${encodeURIComponent(r)}`);
      ws.onopen = () => { resolve(ws.extensions); ws.close(); };
      ws.onerror = () => reject(new Error('the test socket failed'));
    }), room);
    assert.match(extensions, /^permessage-deflate\b/, 'the socket negotiated permessage-deflate');
    assert.match(extensions, /server_no_context_takeover/);
    assert.match(extensions, /client_no_context_takeover/);

    await awaitOnline(bob.page, [alice.id, bob.id]);
    // Long enough to be sent compressed both ways (Chromium compresses what
    // it sends too); non-ASCII to catch a byte cut in the wrong place.
    const long = 'Compressed once for the room, inflated by each browser: ünïcødé ✓ '.repeat(12);
    await send(alice.page, long);
    const got = await awaitMessage(bob.page, long);
    assert.equal(got.mine, false, 'the long message shows intact at the other side');
    await send(bob.page, 'short');
    await awaitMessage(alice.page, 'short');

    // The history (history 50 in browser_test.go) is replayed compressed.
    const carol = await openChat(room);
    try {
      await awaitMessage(carol.page, long);
      await awaitMessage(carol.page, 'short');
      assertNoProblems(carol);
    } finally {
      await carol.context.close();
    }
    assertNoProblems(alice, bob);
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});

test('a nickname shows at the other side', { timeout: TEST_TIMEOUT }, async () => {
  const room = uniqueRoom('nick');
  const a = await openChat(room);
  const b = await openChat(room);
  try {
    await awaitOnline(b.page, [a.id, b.id]);
    await setNick(a.page, 'Zoë Ångström');
    await awaitNotice(b.page, `#${a.id} is now Zoë Ångström`);
    const online = await awaitOnline(b.page, [a.id, b.id]);
    assert.equal(online.names[a.id], 'Zoë Ångström', 'the presence list shows the new name');
    const mine = await awaitOnline(a.page, [a.id, b.id]);
    assert.equal(mine.names[a.id], 'Zoë Ångström', 'the renamer sees its own name');

    await send(a.page, 'named now');
    const got = await awaitMessage(b.page, 'named now');
    assert.equal(got.from, 'Zoë Ångström');

    // A blank name is refused on the page, and the name stays.
    await a.page.getByLabel('Your name').fill('   ');
    await a.page.getByLabel('Your name').press('Enter');
    assert.match(await a.page.locator('#nick-note').textContent(), /type a name/i);
    assert.equal((await awaitOnline(b.page, [a.id, b.id])).names[a.id], 'Zoë Ångström');
    assertNoProblems(a, b);
  } finally {
    await a.context.close();
    await b.context.close();
  }
});

test('authenticated names are marked apart from chosen nicks', { timeout: TEST_TIMEOUT }, async () => {
  const room = uniqueRoom('verified');
  const real = await openChat(room, { user: 'Alice' });
  const fake = await openChat(room);
  const viewer = await openChat(room);
  try {
    const ids = [real.id, fake.id, viewer.id];
    await setNick(fake.page, 'Alice');
    await awaitNotice(viewer.page, `#${fake.id} is now Alice`);
    const online = await awaitOnline(viewer.page, ids);
    assert.equal(online.names[real.id], 'Alice');
    assert.equal(online.names[fake.id], 'Alice');
    assert.equal(online.verified[real.id], 'verified name', 'the authenticated Alice is marked');
    assert.equal(online.verified[fake.id], '', 'the chosen Alice is not');

    await send(real.page, 'the real one');
    await send(fake.page, 'the other one');
    const fromReal = await awaitMessage(viewer.page, 'the real one');
    const fromFake = await awaitMessage(viewer.page, 'the other one');
    assert.equal(fromReal.from, 'Alice');
    assert.equal(fromReal.verified, 'verified name', "the authenticated Alice's message is marked");
    assert.equal(fromFake.from, 'Alice');
    assert.equal(fromFake.verified, '', "the chosen Alice's message is not");

    // The authenticated page sees its own name marked, and cannot change it.
    const own = await awaitOnline(real.page, ids);
    assert.equal(own.verified[real.id], 'verified name');
    assert.equal(await real.page.getByLabel('Your name').isEditable(), false);
    assertNoProblems(real, fake, viewer);
  } finally {
    await real.context.close();
    await fake.context.close();
    await viewer.context.close();
  }
});

test('the presence list updates on join and leave', { timeout: TEST_TIMEOUT }, async () => {
  const room = uniqueRoom('presence');
  const a = await openChat(room);
  try {
    let online = await awaitOnline(a.page, [a.id]);
    assert.equal(online.count, '1');

    const b = await openChat(room);
    online = await awaitOnline(a.page, [a.id, b.id]);
    assert.equal(online.count, '2', 'the count follows a join');
    assert.equal(online.names[b.id], `#${b.id}`, 'an unnamed member is shown by id');
    await awaitNotice(a.page, `#${b.id} joined`);
    const fromB = await awaitOnline(b.page, [a.id, b.id]);
    assert.equal(fromB.count, '2', 'a newcomer sees who was there');

    await b.context.close();
    online = await awaitOnline(a.page, [a.id]);
    assert.equal(online.count, '1', 'the count follows a leave');
    await awaitNotice(a.page, `#${b.id} left`);
    assertNoProblems(a);
  } finally {
    await a.context.close();
  }
});

// The server runs with presence_limit 3 (browser_test.go): a fourth member
// makes a room big.
test('a big room shows its size and some members, and full presence again when it shrinks', { timeout: TEST_TIMEOUT }, async () => {
  const room = uniqueRoom('big');
  const a = await openChat(room);
  const b = await openChat(room);
  const c = await openChat(room);
  try {
    let online = await awaitOnline(a.page, [a.id, b.id, c.id]);
    assert.equal(online.count, '3');
    assert.equal(await a.page.locator('#online-note').textContent(), '', 'a small room has no size note');

    const d = await openChat(room);
    try {
      // The newcomer is told the size and shown at most presence_limit
      // members besides itself.
      await d.page.waitForFunction(() => document.getElementById('online-count').textContent === '4', null, { timeout: WAIT });
      assert.match(await d.page.locator('#online-note').textContent(), /^4 online; showing [1-4]$/);
      const listed = await d.page.locator('#online-list li').count();
      assert.ok(listed >= 1 && listed <= 4, `the newcomer lists ${listed} members`);
      // The others get the count, not a join.
      await a.page.waitForFunction(() => document.getElementById('online-note').textContent.startsWith('4 online'), null, { timeout: WAIT });
      assert.equal(await a.page.locator('#online-count').textContent(), '4');
      const notices = await a.page.locator('#log li.notice').allTextContents();
      assert.ok(!notices.some((n) => n.includes(`#${d.id} joined`)), 'no join notice in a big room');
      assertNoProblems(d);
    } finally {
      await d.context.close();
    }
    // Back within the limit: a fresh list, and the note goes.
    await a.page.waitForFunction(() => document.getElementById('online-note').textContent === '', null, { timeout: WAIT });
    online = await awaitOnline(a.page, [a.id, b.id, c.id]);
    assert.equal(online.count, '3');
    assertNoProblems(a, b, c);
  } finally {
    for (const x of [a, b, c]) await x.context.close();
  }
});

test('HTML and script payloads show as literal text and run nothing', { timeout: TEST_TIMEOUT }, async () => {
  const room = uniqueRoom('xss');
  const a = await openChat(room);
  const b = await openChat(room);
  try {
    const payloads = [
      '<img src=x onerror=window.__pwned=1>',
      '<script>window.__pwned=1</script>',
      '"><svg onload=window.__pwned=1>',
      '&lt;b&gt;not bold&lt;/b&gt;',
    ];
    const evilNick = '<img src=y onerror=__pwned=2>'; // 29 of the 32 characters a name may have
    await setNick(a.page, evilNick);
    for (const p of payloads) await send(a.page, p);
    for (const p of payloads) {
      const got = await awaitMessage(b.page, p);
      assert.equal(got.from, evilNick, 'the name is literal text too');
      const own = await awaitMessage(a.page, p);
      assert.equal(own.mine, true);
    }
    const online = await awaitOnline(b.page, [a.id, b.id]);
    assert.equal(online.names[a.id], evilNick);
    for (const c of [a, b]) {
      assert.equal(await c.page.evaluate(() => window.__pwned), undefined, 'no payload ran');
      assert.equal(await c.page.locator('#log img, #log script, #log svg, #log b, #online-list img').count(), 0, 'no element was made from a payload');
    }
    assertNoProblems(a, b);
  } finally {
    await a.context.close();
    await b.context.close();
  }
});

test('the page reconnects after the server restarts and chats again', { timeout: TEST_TIMEOUT, skip: CONTROL ? false : 'CHATROOM_CONTROL_URL not set' }, async () => {
  const room = uniqueRoom('restart');
  const a = await openChat(room);
  const b = await openChat(room);
  try {
    await setNick(a.page, 'Dana');
    await awaitOnline(b.page, [a.id, b.id]);
    await send(a.page, 'before the restart');
    await awaitMessage(b.page, 'before the restart');

    const res = await fetch(`${CONTROL}/restart`, { method: 'POST', signal: AbortSignal.timeout(60_000) });
    assert.equal(res.status, 200, `restart: ${await res.text()}`);

    for (const c of [a, b]) {
      await awaitNotice(c.page, 'Disconnected');
      await awaitConnected(c.page, 2, WAIT_RECONNECT);
    }
    const aid = (await a.page.locator('#my-id').textContent()).replace(/^#/, '');
    const bid = (await b.page.locator('#my-id').textContent()).replace(/^#/, '');
    await awaitOnline(a.page, [aid, bid]);
    const online = await awaitOnline(b.page, [aid, bid]);
    assert.equal(online.names[aid], 'Dana', 'the name is set again after reconnecting');

    await send(a.page, 'after the restart');
    const got = await awaitMessage(b.page, 'after the restart');
    assert.equal(got.from, 'Dana');
    await send(b.page, 'welcome back');
    await awaitMessage(a.page, 'welcome back');
    // What was said before is still on the page, once.
    const before = await b.page.locator('#log li.msg .text', { hasText: 'before the restart' }).count();
    assert.equal(before, 1);
    assertNoProblems(a, b);
  } finally {
    await a.context.close();
    await b.context.close();
  }
});

test('frames of the seed protocol alone are shown sensibly', { timeout: TEST_TIMEOUT }, async () => {
  // A server that speaks only the seed's fields (and one unknown field):
  // played by Playwright in place of the chat WebSocket.
  const context = await browser.newContext({ viewport: { width: 760, height: 560 } });
  try {
    const page = await context.newPage();
    await page.routeWebSocket(/\/ws/, (ws) => {
      ws.send(JSON.stringify({ msg: 'you are login as 23 id', msg_source: 'server' }));
      ws.send(JSON.stringify({ from_id: '12', msg: 'I am a php programmer', msg_time: '1456690889', colour: 'blue' }));
      ws.send(JSON.stringify({ msg: 'maintenance at noon', msg_source: 'server', event: 'future-thing' }));
      ws.send('not json');
      ws.send(JSON.stringify([1, 2]));
    });
    await page.goto(`${BASE}/?room=seed`, { timeout: WAIT });
    await awaitConnected(page, 1);
    assert.equal(await page.locator('#my-id').textContent(), '#23');
    const got = await awaitMessage(page, 'I am a php programmer');
    assert.equal(got.from, '#12');
    assert.notEqual(got.time, '');
    await awaitNotice(page, 'maintenance at noon');
  } finally {
    await context.close();
  }
});

test('works with the keyboard alone', { timeout: TEST_TIMEOUT }, async () => {
  const room = uniqueRoom('keyboard');
  const a = await openChat(room);
  const b = await openChat(room);
  try {
    const focused = () => a.page.evaluate(() => document.activeElement?.id ?? '');
    // Tab order: name field, Set, the message log (scrollable), message box.
    await a.page.keyboard.press('Tab');
    assert.equal(await focused(), 'nick-input');
    await a.page.keyboard.type('Kim');
    await a.page.keyboard.press('Enter');
    await a.page.keyboard.press('Tab');
    assert.equal(await focused(), 'nick-button');
    await a.page.keyboard.press('Tab');
    assert.equal(await focused(), 'log');
    await a.page.keyboard.press('Tab');
    assert.equal(await focused(), 'msg-input');
    await a.page.keyboard.type('typed, not clicked');
    await a.page.keyboard.press('Enter');
    const got = await awaitMessage(b.page, 'typed, not clicked');
    assert.equal(got.from, 'Kim');
    assert.equal(await focused(), 'msg-input', 'the message box keeps the focus after sending');
    assertNoProblems(a, b);
  } finally {
    await a.context.close();
    await b.context.close();
  }
});

test('a reconnect does not repeat the history the server replays', { timeout: TEST_TIMEOUT }, async () => {
  // The server keeps running (history 50); only A's connection drops.
  const room = uniqueRoom('replay');
  const b = await openChat(room);
  const context = await browser.newContext({ viewport: { width: 760, height: 560 } });
  try {
    const { page, openGate, id: aid, drop } = await openDroppable(context, room);
    await awaitOnline(b.page, [aid, b.id]);

    await send(b.page, 'one');
    await send(b.page, 'two');
    await awaitMessage(page, 'two');
    await send(page, 'three');
    await awaitMessage(b.page, 'three');

    await drop();
    await awaitOnline(b.page, [b.id]);
    await send(b.page, 'while you were away');
    openGate();
    await awaitConnected(page, 2);
    const newId = (await page.locator('#my-id').textContent()).replace(/^#/, '');
    await awaitOnline(b.page, [newId, b.id]);
    await send(b.page, 'four');
    await awaitMessage(page, 'four');
    const texts = await page.locator('#log li.msg .text').allTextContents();
    assert.deepEqual(texts, ['one', 'two', 'three', 'while you were away', 'four'], 'each message once, in order');
    assertNoProblems(b);
  } finally {
    await context.close();
    await b.context.close();
  }
});

test('a page resumes with since after its socket drops: nothing missed, nothing twice', { timeout: TEST_TIMEOUT }, async () => {
  // Only A's connection drops; the server keeps running.
  const room = uniqueRoom('resume');
  const b = await openChat(room);
  const context = await browser.newContext({ viewport: { width: 760, height: 560 } });
  try {
    const { page, routes, openGate, id: aid, drop } = await openDroppable(context, room);
    await awaitOnline(b.page, [aid, b.id]);
    assert.equal(routes[0].url.searchParams.has('since'), false, 'a first connection does not resume');

    await send(b.page, 'one');
    await send(b.page, 'two');
    await awaitMessage(page, 'two');
    const two = routes[0].frames.find((f) => f.msg === 'two');
    assert.match(two?.seq ?? '', /^\d+$/, 'chat frames carry a seq');
    await send(page, 'three'); // A's own: in the replay under its old id
    await awaitMessage(b.page, 'three');

    await drop();
    await awaitOnline(b.page, [b.id]);
    const away = ['away 1', 'away 2', 'away 3'];
    for (const m of away) await send(b.page, m);
    openGate();
    await awaitConnected(page, 2);
    const newId = (await page.locator('#my-id').textContent()).replace(/^#/, '');
    assert.notEqual(newId, aid);
    assert.equal(routes[1].url.searchParams.get('since'), two.seq, 'the reconnect resumes from the last seq the page got');
    await awaitOnline(b.page, [newId, b.id]);
    await send(b.page, 'four');
    await awaitMessage(page, 'four');

    // What the server replayed: A's own message and the three, then resumed.
    const replay = routes[1].frames.slice(2, 6);
    assert.deepEqual(replay.map((f) => f.msg), ['three', ...away], 'the server replays what came after since');
    assert.equal(replay[0].from_id, aid);
    const resumed = routes[1].frames[6];
    assert.equal(resumed.event, 'resumed');
    assert.equal(resumed.missed, '4');
    assert.equal(resumed.complete, true);

    const texts = await page.locator('#log li.msg .text').allTextContents();
    assert.deepEqual(texts, ['one', 'two', 'three', ...away, 'four'], 'each message once, in order');
    assert.equal(await page.locator('#log li.notice', { hasText: 'no longer available' }).count(), 0);
    assertNoProblems(b);
  } finally {
    await context.close();
    await b.context.close();
  }
});
