// Unit tests of web/protocol.js: text rules, frame parsing, close codes, and the client driven
// through a fake WebSocket with fake timers. Run: node --test tests/web-unit/

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createClient, parseFrame, closeKind, backoffDelay, normalizeInterest, checkText, charCount,
  wsUrl, wellFormed, TokenBucket,
} from '../../web/protocol.js';

// ---- fakes -------------------------------------------------------------------------------------

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.closedByClient = true;
  }
  // server side
  open() { this.readyState = 1; this.onopen?.({}); }
  frame(obj) { this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) }); }
  shut(code) { this.readyState = 3; this.onclose?.({ code }); }
}

function fakeClock() {
  let t = 0;
  let seq = 0;
  const timers = new Map();
  return {
    now: () => t,
    setTimeout: (fn, ms) => { timers.set(++seq, { at: t + ms, fn }); return seq; },
    clearTimeout: (id) => { timers.delete(id); },
    pending: () => [...timers.values()].map((x) => x.at - t).sort((a, b) => a - b),
    advance(ms) {
      const end = t + ms;
      for (;;) {
        const due = [...timers.entries()].filter(([, x]) => x.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        t = due[1].at;
        due[1].fn();
      }
      t = end;
    },
  };
}

function setup(opts = {}) {
  FakeSocket.all = [];
  const clock = fakeClock();
  const events = [];
  const client = createClient({
    url: 'ws://example.test/ws', WebSocket: FakeSocket, onEvent: (e) => events.push(e),
    now: clock.now, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, random: () => 0.5,
    ...opts,
  });
  const last = () => FakeSocket.all.at(-1);
  return { clock, events, client, last };
}

// ---- pure rules ----------------------------------------------------------------------------------

test('wsUrl follows the page scheme and host', () => {
  assert.equal(wsUrl({ protocol: 'http:', host: 'localhost:8080' }), 'ws://localhost:8080/ws');
  assert.equal(wsUrl({ protocol: 'https:', host: 'chat.example' }), 'wss://chat.example/ws');
});

test('interest normalisation matches PROTOCOL.md (and the server code)', () => {
  assert.equal(normalizeInterest('  Board   Games '), 'board games');
  assert.equal(normalizeInterest('A\tB\nC'), 'a b c');
  assert.equal(normalizeInterest('\u3000x\u00a0\u2003y\u0085'), 'x y', 'Unicode White_Space, NEL included');
  assert.equal(normalizeInterest('a\ufeffb'), 'a\ufeffb', 'U+FEFF is not White_Space');
  assert.equal(normalizeInterest('ΟΔΟΣ'), 'οδος', 'whole-string lower case, like str::to_lowercase');
  assert.equal(normalizeInterest('İ'), 'i\u0307');
  assert.equal(normalizeInterest('   '), '');
});

test('message text rules: white space only is empty, 2000 characters counted as scalar values', () => {
  assert.equal(checkText(''), 'empty');
  assert.equal(checkText(' \n\u3000'), 'empty');
  assert.equal(checkText('x'.repeat(2000)), 'ok');
  assert.equal(checkText('x'.repeat(2001)), 'too_long');
  assert.equal(checkText('😀'.repeat(2000)), 'ok');
  assert.equal(charCount('a😀b'), 3);
  assert.equal(wellFormed('a\ud800b'), 'a\ufffdb');
});

test('close codes map to what the page says', () => {
  assert.equal(closeKind(1012), 'restarting');
  assert.equal(closeKind(1013), 'busy');
  assert.equal(closeKind(1008), 'abuse');
  for (const code of [1000, 1001, 1003, 1006, 1009, 1011]) assert.equal(closeKind(code), 'lost');
});

test('backoff doubles from 0.5 s to 15 s with jitter', () => {
  const mid = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 20].map((n) => backoffDelay(n, mid)), [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
  assert.equal(backoffDelay(0, () => 0), 375);
  assert.equal(backoffDelay(0, () => 1), 625);
});

test('parseFrame accepts server frames and ignores the rest', () => {
  // Today's server: hello without features; the page reads "no extensions".
  assert.deepEqual(parseFrame('{"type":"hello","version":1,"online":4}'), { type: 'hello', version: 1, online: 4, features: [], challenge: null });
  assert.deepEqual(parseFrame('{"type":"matched","common":["a",1]}'), { type: 'matched', common: ['a'] });
  assert.deepEqual(parseFrame('{"type":"matched"}'), { type: 'matched', common: [] });
  assert.deepEqual(parseFrame('{"type":"msg","text":"<i>x</i>","extra":1}'), { type: 'msg', text: '<i>x</i>' });
  assert.deepEqual(parseFrame('{"type":"typing","active":true}'), { type: 'typing', active: true });
  assert.deepEqual(parseFrame('{"type":"left","reason":"skipped"}'), { type: 'left', reason: 'skipped' });
  assert.deepEqual(parseFrame('{"type":"error","code":"bad_state","message":"m"}'), { type: 'error', code: 'bad_state', message: 'm', retryAfter: null });
  for (const bad of ['nope', '[]', '{"type":7}', '{"type":"future"}', '{"type":"msg"}', 'null']) {
    assert.equal(parseFrame(bad), null, bad);
  }
});

test('parseFrame: the safety extensions (features, challenge, reported, banned)', () => {
  const salt = '5f'.repeat(32);
  const challenge = { alg: 'sha256-lzb', salt, bits: 10 };
  assert.deepEqual(
    parseFrame(JSON.stringify({ type: 'hello', version: 1, online: 7, features: ['report', 'pow', 'future', 3], challenge })),
    { type: 'hello', version: 1, online: 7, features: ['report', 'pow', 'future'], challenge: { salt, bits: 10 } },
  );
  // A challenge is read only when features has "pow", and only a well-formed one.
  assert.equal(parseFrame(JSON.stringify({ type: 'hello', version: 1, online: 1, features: ['report'], challenge })).challenge, null);
  assert.equal(parseFrame(JSON.stringify({ type: 'hello', version: 1, online: 1, features: ['pow'], challenge: { ...challenge, alg: 'x' } })).challenge, null);
  assert.deepEqual(parseFrame(JSON.stringify({ type: 'hello', version: 1, online: 1, features: 'pow' })).features, []);
  assert.deepEqual(parseFrame('{"type":"reported"}'), { type: 'reported' });
  assert.deepEqual(
    parseFrame('{"type":"error","code":"banned","message":"m","retry_after":3541}'),
    { type: 'error', code: 'banned', message: 'm', retryAfter: 3541 },
  );
  assert.equal(parseFrame('{"type":"error","code":"banned","retry_after":0}').retryAfter, null);
  assert.equal(parseFrame('{"type":"error","code":"banned","retry_after":"60"}').retryAfter, null);
  assert.deepEqual(parseFrame('{"type":"error","code":"pow_invalid"}'), { type: 'error', code: 'pow_invalid', message: '', retryAfter: null });
});

test('report counts against the control allowance, like find, skip and stop', () => {
  const { client, last } = setup();
  client.connect();
  last().open();
  for (let i = 0; i < 6; i++) client.send({ type: 'report', reason: 'spam' });
  assert.equal(last().sent.length, 4, 'control burst 4');
  client.send({ type: 'msg', text: 'still goes' });
  assert.equal(last().sent.length, 4, 'in order: behind the waiting reports');
});

test('token bucket', () => {
  const b = new TokenBucket(2, 3, 0);
  assert.ok(b.take(0) && b.take(0) && b.take(0));
  assert.equal(b.take(0), false);
  assert.equal(b.wait(0), 500);
  assert.equal(b.take(500), true);
});

// ---- the client --------------------------------------------------------------------------------

test('connects to the url, delivers frames, sends JSON commands', () => {
  const { client, events, last } = setup();
  client.connect();
  client.connect(); // already opening: no second socket
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(last().url, 'ws://example.test/ws');
  assert.equal(client.send({ type: 'find' }), false, 'not open yet');
  last().open();
  last().frame({ type: 'hello', version: 1, online: 2 });
  last().frame('garbage');
  last().frame({ type: 'unknown-extension' });
  assert.deepEqual(events, [{ type: 'frame', frame: { type: 'hello', version: 1, online: 2, features: [], challenge: null } }]);
  assert.equal(client.send({ type: 'find', interests: ['a'] }), true);
  client.send({ type: 'msg', text: 'hi\ud800' });
  assert.deepEqual(last().sent, [{ type: 'find', interests: ['a'] }, { type: 'msg', text: 'hi\ufffd' }]);
});

test('close codes are reported once, with their meaning', () => {
  for (const [code, kind] of [[1012, 'restarting'], [1013, 'busy'], [1008, 'abuse'], [1006, 'lost'], [1001, 'lost']]) {
    const { client, events, last } = setup();
    client.connect();
    last().open();
    last().shut(code);
    last().shut(code);
    assert.deepEqual(events, [{ type: 'closed', code, kind }]);
    assert.equal(client.connected, false);
  }
});

test('a socket that never opens is given up after the open timeout', () => {
  const { client, events, last, clock } = setup({ openTimeoutMs: 5000 });
  client.connect();
  clock.advance(4999);
  assert.deepEqual(events, []);
  clock.advance(1);
  assert.deepEqual(events, [{ type: 'closed', code: 1006, kind: 'lost' }]);
  assert.equal(last().closedByClient, true);
  last().shut(1006); // its late close event is ignored
  assert.equal(events.length, 1);
});

test('reconnectLater backs off and resets after hello', () => {
  const { client, last, clock } = setup();
  client.connect();
  last().shut(1006);
  client.reconnectLater();
  client.reconnectLater(); // already scheduled
  assert.deepEqual(clock.pending(), [500]);
  clock.advance(500);
  assert.equal(FakeSocket.all.length, 2);
  last().shut(1006);
  client.reconnectLater();
  assert.deepEqual(clock.pending(), [1000]);
  clock.advance(1000);
  last().shut(1006);
  client.reconnectLater();
  assert.deepEqual(clock.pending(), [2000]);
  // A user's click connects at once, cancelling the wait.
  client.connect();
  assert.equal(FakeSocket.all.length, 4);
  assert.deepEqual(clock.pending(), [10000], 'only the open timeout');
  last().open();
  last().frame({ type: 'hello', version: 1, online: 1 });
  last().shut(1012);
  client.reconnectLater();
  assert.deepEqual(clock.pending(), [500], 'back to the first step after a good connection');
  client.cancelRetry();
  assert.deepEqual(clock.pending(), []);
});

test('drop reports a lost connection at once (the browser went offline)', () => {
  const { client, events, last } = setup();
  client.connect();
  last().open();
  client.drop();
  assert.deepEqual(events, [{ type: 'closed', code: 1006, kind: 'lost' }]);
  assert.equal(last().closedByClient, true);
  client.close();
});

test('close() is silent', () => {
  const { client, events, last } = setup();
  client.connect();
  last().open();
  client.close();
  last().shut(1000);
  assert.deepEqual(events, []);
});

test('the local allowance delays control commands in order instead of tripping the server', () => {
  const { client, last, clock } = setup({ controlRate: 1, controlBurst: 2 });
  client.connect();
  last().open();
  client.send({ type: 'find' });
  client.send({ type: 'skip' });
  client.send({ type: 'stop' });
  client.send({ type: 'typing', active: false });
  assert.deepEqual(last().sent.map((f) => f.type), ['find', 'skip'], 'stop waits, and typing waits behind it');
  clock.advance(999);
  assert.equal(last().sent.length, 2);
  clock.advance(1);
  assert.deepEqual(last().sent.map((f) => f.type), ['find', 'skip', 'stop', 'typing']);
});

test('messages: canSendMessage tells when the allowance is spent; stale typing:true is dropped', () => {
  const { client, last, clock } = setup({ chatRate: 1, chatBurst: 2 });
  assert.equal(client.canSendMessage(), false, 'no socket');
  client.connect();
  last().open();
  assert.equal(client.canSendMessage(), true);
  client.send({ type: 'msg', text: 'a' });
  client.send({ type: 'msg', text: 'b' });
  assert.equal(client.canSendMessage(), false);
  assert.equal(client.send({ type: 'typing', active: true }), false);
  client.send({ type: 'typing', active: false });
  assert.deepEqual(last().sent.map((f) => f.text ?? f.active), ['a', 'b']);
  clock.advance(1000);
  assert.deepEqual(last().sent.map((f) => f.text ?? f.active), ['a', 'b', false]);
  clock.advance(1000);
  assert.equal(client.canSendMessage(), true);
});

test('frames queued when the socket closes are dropped, not sent on the next one', () => {
  const { client, last, clock } = setup({ controlRate: 1, controlBurst: 1 });
  client.connect();
  last().open();
  client.send({ type: 'find' });
  client.send({ type: 'skip' });
  last().shut(1006);
  client.connect();
  last().open();
  client.send({ type: 'find' });
  assert.deepEqual(last().sent, [], 'the allowance outlives the socket');
  clock.advance(5000);
  assert.deepEqual(last().sent, [{ type: 'find' }], 'the old skip is gone');
});
