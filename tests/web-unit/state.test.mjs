// Unit tests of web/state.js, the page's reducer: transitions, texts, timers with an injected clock.
// Run: node --test tests/web-unit/

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  initialState, reduce, takeInterests, statusText, hintText, noticeText, titleText, onlineText,
  counterText, showNewStranger, canSkip, matchedText, TEXT,
} from '../../web/state.js';

/** Applies actions in turn; returns the final state and every effect, in order. */
function run(state, ...actions) {
  const effects = [];
  for (const a of actions) {
    const r = reduce(state, a);
    state = r.state;
    effects.push(...r.effects);
  }
  return { state, effects };
}
const sent = (effects) => effects.filter((e) => e.type === 'send').map((e) => e.frame);
const srv = (frame, now = 0) => ({ type: 'server', frame, now });
const hello = srv({ type: 'hello', version: 1, online: 3 });
/** A page whose 18+ box is ticked (remembered, or ticked just now). */
const ready = () => initialState({ adult: true });

/** A page that clicked Start, got hello, waiting and matched. */
function chatting(common = []) {
  return run(ready(), { type: 'start' }, hello, srv({ type: 'waiting' }), srv({ type: 'matched', common })).state;
}

test('initial state is the landing view', () => {
  const s = initialState();
  assert.equal(s.view, 'landing');
  assert.equal(statusText(s), '');
  assert.equal(titleText(s), 'stranger-relay');
  assert.equal(showNewStranger(s), false);
});

test('start connects, hello sends find, waiting, matched, messages, left', () => {
  let r = run(ready(), { type: 'start' });
  assert.equal(r.state.view, 'chat');
  assert.equal(r.state.phase, 'waiting');
  assert.equal(statusText(r.state), 'Looking for a stranger…');
  assert.deepEqual(r.effects.map((e) => e.type), ['askNotify', 'focus', 'connect']);
  assert.deepEqual(sent(r.effects), []);

  r = run(r.state, hello);
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.equal(r.state.connected, true);
  assert.equal(r.state.online, 3);

  r = run(r.state, srv({ type: 'waiting' }));
  assert.equal(statusText(r.state), 'Looking for a stranger…');
  assert.equal(canSkip(r.state), true);

  r = run(r.state, srv({ type: 'matched', common: [] }));
  assert.equal(r.state.phase, 'chatting');
  assert.equal(statusText(r.state), "You're now chatting with a random stranger. Say hi!");
  assert.deepEqual(r.state.messages, [], 'the match is said once, by the status line, not again in the log');
  assert.ok(r.effects.some((e) => e.type === 'focus' && e.target === 'message'));

  r = run(r.state, srv({ type: 'typing', active: true }));
  assert.equal(r.state.partnerTyping, true);
  r = run(r.state, srv({ type: 'msg', text: '<b>hi</b>' }));
  assert.equal(r.state.partnerTyping, false, 'a message ends the typing indicator');
  assert.deepEqual(r.state.messages.at(-1), { id: 1, kind: 'stranger', text: '<b>hi</b>' });

  r = run(r.state, { type: 'send', text: 'hello  there\n', now: 5 });
  assert.deepEqual(sent(r.effects), [{ type: 'msg', text: 'hello  there\n' }]);
  assert.ok(r.effects.some((e) => e.type === 'clearDraft'));
  assert.equal(r.state.messages.at(-1).kind, 'me');
  assert.equal(r.state.messages.at(-1).text, 'hello  there\n', 'sent as typed, not trimmed');

  r = run(r.state, srv({ type: 'left', reason: 'skipped' }));
  assert.equal(r.state.phase, 'ended');
  assert.equal(statusText(r.state), 'Stranger has disconnected.');
  assert.equal(r.state.messages.at(-1).kind, 'system');
  assert.equal(r.state.messages.at(-1).text, 'Stranger has disconnected.');
  assert.equal(showNewStranger(r.state), true);
  assert.equal(canSkip(r.state), false);

  // New stranger: find again; the old conversation stays until the next match.
  r = run(r.state, { type: 'newStranger' });
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.equal(statusText(r.state), 'Looking for a stranger…');
  assert.equal(r.state.messages.length, 3);
  r = run(r.state, srv({ type: 'waiting' }), srv({ type: 'matched', common: [] }));
  assert.equal(r.state.messages.length, 0);
});

test('left with reason disconnected reads the same', () => {
  const { state } = run(chatting(), srv({ type: 'left', reason: 'disconnected' }));
  assert.equal(statusText(state), 'Stranger has disconnected.');
});

test('matched names shared interests', () => {
  assert.equal(matchedText(['a', 'b']), "You're now chatting with a random stranger. You both like: a, b. Say hi!");
  assert.equal(statusText(chatting(['music'])), "You're now chatting with a random stranger. You both like: music. Say hi!");
});

test('find carries the interests', () => {
  let s = run(ready(), { type: 'setInterests', list: ['music', 'chess'] }).state;
  const r = run(s, { type: 'start' }, hello);
  assert.deepEqual(sent(r.effects), [{ type: 'find', interests: ['music', 'chess'] }]);
});

test('start when already connected sends find at once', () => {
  let s = chatting();
  s = run(s, { type: 'stop' }, srv({ type: 'idle' })).state;
  const r = run(s, { type: 'start' });
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.ok(!r.effects.some((e) => e.type === 'connect'));
});

test('skip while chatting: "You skipped." until the next match', () => {
  let r = run(chatting(), { type: 'skip' });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }]);
  assert.equal(statusText(r.state), 'You skipped.');
  assert.equal(r.state.messages.at(-1).text, 'You skipped.');
  assert.equal(r.state.messages.at(-1).kind, 'system');
  assert.equal(showNewStranger(r.state), false, 'already looking');
  // Late frames of the old room are dropped.
  r = run(r.state, srv({ type: 'msg', text: 'late' }), srv({ type: 'left', reason: 'skipped' }));
  assert.equal(r.state.messages.at(-1).text, 'You skipped.');
  r = run(r.state, srv({ type: 'waiting' }));
  assert.equal(statusText(r.state), 'You skipped.');
  r = run(r.state, srv({ type: 'matched', common: [] }));
  assert.equal(r.state.phase, 'chatting');
});

test('skip while waiting skips again; skip after the partner left finds', () => {
  let s = run(ready(), { type: 'start' }, hello, srv({ type: 'waiting' })).state;
  let r = run(s, { type: 'skip' });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }]);
  assert.equal(statusText(r.state), 'Looking for a stranger…');
  s = run(chatting(), srv({ type: 'left', reason: 'disconnected' })).state;
  r = run(s, { type: 'skip' });
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
});

test('a skip refused as bad_state (partner left first) queues with find, quietly', () => {
  let r = run(chatting(), { type: 'skip' }, srv({ type: 'left', reason: 'disconnected' }));
  assert.equal(statusText(r.state), 'You skipped.');
  r = run(r.state, srv({ type: 'error', code: 'bad_state', message: 'x' }));
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.equal(r.state.notice, null);
  // Another bad_state (say, for a msg that raced) changes nothing.
  r = run(r.state, srv({ type: 'error', code: 'bad_state', message: 'x' }));
  assert.deepEqual(r.effects, []);
});

test('bad_state with nothing pending is ignored', () => {
  const s = chatting();
  const r = run(s, srv({ type: 'error', code: 'bad_state', message: '' }));
  assert.deepEqual(r.effects, []);
  assert.equal(noticeText(r.state), '');
});

test('stop goes back to the landing view and tells the server', () => {
  let r = run(chatting(), { type: 'stop' });
  assert.equal(r.state.view, 'landing');
  assert.deepEqual(sent(r.effects), [{ type: 'stop' }]);
  assert.ok(r.effects.some((e) => e.type === 'focus' && e.target === 'start'));
  assert.equal(r.state.messages.length, 0);
  // A match that raced the stop is not shown.
  r = run(r.state, srv({ type: 'matched', common: [] }));
  assert.equal(r.state.view, 'landing');
  assert.deepEqual(r.effects, []);
  r = run(r.state, srv({ type: 'idle' }));
  assert.equal(r.state.pending, null);
  // Stop after the partner left: the server is idle, nothing to send.
  r = run(chatting(), srv({ type: 'left', reason: 'disconnected' }), { type: 'stop' });
  assert.deepEqual(sent(r.effects), []);
});

test('esc while chatting asks for a second esc within 3 s', () => {
  const s = chatting();
  let r = run(s, { type: 'esc', now: 1000 });
  assert.deepEqual(sent(r.effects), []);
  assert.equal(hintText(r.state), 'Press Esc again to skip.');
  assert.deepEqual(r.effects, [{ type: 'timer', name: 'esc', ms: 3000 }]);
  r = run(r.state, { type: 'esc', now: 3900 });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }]);
  assert.equal(hintText(r.state), '');
  assert.equal(statusText(r.state), 'You skipped.');
});

test('esc confirmation expires after 3 s', () => {
  let r = run(chatting(), { type: 'esc', now: 1000 }, { type: 'escExpire', now: 2000 });
  assert.equal(hintText(r.state), 'Press Esc again to skip.', 'an early timer does not clear it');
  r = run(r.state, { type: 'escExpire', now: 4000 });
  assert.equal(hintText(r.state), '');
  r = run(r.state, { type: 'esc', now: 4100 });
  assert.deepEqual(sent(r.effects), [], 'a lone esc after expiry only asks again');
  assert.equal(hintText(r.state), 'Press Esc again to skip.');
  // Late second esc (timer not yet delivered) does not skip either.
  r = run(chatting(), { type: 'esc', now: 0 }, { type: 'esc', now: 3001 });
  assert.deepEqual(sent(r.effects), []);
});

test('one esc skips while waiting; esc after the end starts a new chat; esc on landing does nothing', () => {
  let s = run(ready(), { type: 'start' }, hello, srv({ type: 'waiting' })).state;
  assert.deepEqual(sent(run(s, { type: 'esc', now: 0 }).effects), [{ type: 'skip' }]);
  s = run(chatting(), srv({ type: 'left', reason: 'skipped' })).state;
  assert.deepEqual(sent(run(s, { type: 'esc', now: 0 }).effects), [{ type: 'find' }]);
  assert.deepEqual(run(ready(), { type: 'esc', now: 0 }).effects, []);
});

test('typing: true once when the user starts, false after a 2 s pause', () => {
  let r = run(chatting(), { type: 'input', text: 'h', now: 0 });
  assert.deepEqual(sent(r.effects), [{ type: 'typing', active: true }]);
  r = run(r.state, { type: 'input', text: 'he', now: 500 }, { type: 'input', text: 'hel', now: 1500 });
  assert.deepEqual(sent(r.effects), [], 'not per keystroke');
  // The timer of the first keystroke fires at 2000 ms: not yet 2 s since the last one.
  r = run(r.state, { type: 'typingExpire', now: 2000 });
  assert.deepEqual(sent(r.effects), []);
  assert.deepEqual(r.effects, [{ type: 'timer', name: 'typing', ms: 1500 }]);
  r = run(r.state, { type: 'typingExpire', now: 3500 });
  assert.deepEqual(sent(r.effects), [{ type: 'typing', active: false }]);
  r = run(r.state, { type: 'typingExpire', now: 9000 });
  assert.deepEqual(sent(r.effects), []);
  r = run(r.state, { type: 'input', text: 'hell', now: 9100 });
  assert.deepEqual(sent(r.effects), [{ type: 'typing', active: true }]);
});

test('typing: false on send, and when the box is emptied', () => {
  let r = run(chatting(), { type: 'input', text: 'hi', now: 0 }, { type: 'send', text: 'hi', now: 100 });
  assert.deepEqual(sent(r.effects), [
    { type: 'typing', active: true }, { type: 'msg', text: 'hi' }, { type: 'typing', active: false },
  ]);
  r = run(chatting(), { type: 'input', text: 'x', now: 0 }, { type: 'input', text: '', now: 10 });
  assert.deepEqual(sent(r.effects), [{ type: 'typing', active: true }, { type: 'typing', active: false }]);
  // White space only is not typing.
  r = run(chatting(), { type: 'input', text: '  ', now: 0 });
  assert.deepEqual(sent(r.effects), []);
  // Not chatting: nothing is sent.
  r = run(ready(), { type: 'input', text: 'x', now: 0 });
  assert.deepEqual(r.effects, []);
});

test('send refuses empty, too long and over-allowance text locally', () => {
  let r = run(chatting(), { type: 'send', text: ' \n\t', now: 0 });
  assert.deepEqual(r.effects, []);
  r = run(chatting(), { type: 'send', text: 'x'.repeat(2001), now: 0 });
  assert.deepEqual(sent(r.effects), []);
  assert.equal(noticeText(r.state), 'That message is too long.');
  r = run(chatting(), { type: 'send', text: '😀'.repeat(2000), now: 0 });
  assert.equal(sent(r.effects).length, 1, '2000 characters, 4000 UTF-16 units, is fine');
  r = run(chatting(), { type: 'send', text: 'hi', now: 0, allowed: false });
  assert.deepEqual(sent(r.effects), []);
  assert.ok(!r.effects.some((e) => e.type === 'clearDraft'), 'the draft is kept');
  assert.equal(noticeText(r.state), "You're sending messages too fast.");
});

test('server errors: rate_limited and too_long shown for about 4 s', () => {
  let r = run(chatting(), srv({ type: 'error', code: 'rate_limited', message: '' }, 1000));
  assert.equal(noticeText(r.state), "You're sending messages too fast.");
  assert.deepEqual(r.effects, [{ type: 'timer', name: 'notice', ms: 4000 }]);
  r = run(r.state, { type: 'noticeExpire', now: 4999 });
  assert.equal(noticeText(r.state), "You're sending messages too fast.");
  r = run(r.state, { type: 'noticeExpire', now: 5000 });
  assert.equal(noticeText(r.state), '');

  r = run(chatting(), { type: 'send', text: 'long one', now: 0 }, srv({ type: 'error', code: 'too_long', message: '' }, 5));
  assert.equal(noticeText(r.state), 'That message is too long.');
  assert.equal(r.state.messages.at(-1).failed, true, 'marked as not delivered');

  r = run(chatting(), srv({ type: 'error', code: 'bad_request', message: '' }));
  assert.equal(noticeText(r.state), '');
});

test('a control command refused as rate_limited is sent again', () => {
  let r = run(chatting(), { type: 'skip' }, srv({ type: 'error', code: 'rate_limited', message: '' }, 0));
  assert.ok(r.effects.some((e) => e.type === 'timer' && e.name === 'retryControl'));
  r = run(r.state, { type: 'retryControl' });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }]);
  r = run(r.state, srv({ type: 'waiting' }), { type: 'retryControl' });
  assert.deepEqual(sent(r.effects), [], 'answered: nothing to repeat');
});

test('unread messages are counted while the tab is hidden', () => {
  let r = run(chatting(), { type: 'visibility', hidden: true });
  r = run(r.state, srv({ type: 'msg', text: 'a' }), srv({ type: 'msg', text: 'b' }));
  assert.equal(r.state.unread, 2);
  assert.equal(titleText(r.state), '(2) New message');
  r = run(r.state, { type: 'visibility', hidden: false });
  assert.equal(titleText(r.state), 'stranger-relay');
  r = run(r.state, srv({ type: 'msg', text: 'c' }));
  assert.equal(r.state.unread, 0, 'visible: nothing unread');
});

test('a new match while hidden asks for the alert (sound and notification)', () => {
  let s = run(ready(), { type: 'start' }, hello, srv({ type: 'waiting' }), { type: 'visibility', hidden: true }).state;
  let r = run(s, srv({ type: 'matched', common: [] }));
  assert.ok(r.effects.some((e) => e.type === 'alert'));
  s = run(ready(), { type: 'start' }, hello, srv({ type: 'waiting' })).state;
  r = run(s, srv({ type: 'matched', common: [] }));
  assert.ok(!r.effects.some((e) => e.type === 'alert'));
});

test('close 1012: restarting, reconnects by itself and looks again', () => {
  let r = run(chatting(), { type: 'closed', kind: 'restarting' });
  assert.equal(r.state.phase, 'error');
  assert.equal(statusText(r.state), 'The server is restarting…');
  assert.equal(r.state.messages.at(-1).text, 'The server is restarting…');
  assert.ok(r.effects.some((e) => e.type === 'reconnect'));
  assert.equal(showNewStranger(r.state), true);
  assert.equal(r.state.phase === 'chatting', false, 'no half-dead chat');
  assert.equal(hintText(r.state), 'Reconnecting…');
  // Failed attempts while it is down keep saying so, and keep retrying.
  r = run(r.state, { type: 'closed', kind: 'lost' });
  assert.equal(statusText(r.state), 'The server is restarting…');
  assert.ok(r.effects.some((e) => e.type === 'reconnect'));
  r = run(r.state, hello);
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.equal(statusText(r.state), 'Looking for a stranger…');
});

test('close 1013 and 1008: say why, no automatic reconnect, New stranger offered', () => {
  for (const [kind, text] of [
    ['busy', 'Too many connections from your network or to the server, try again soon.'],
    ['abuse', 'Disconnected for sending too fast.'],
  ]) {
    const r = run(chatting(), { type: 'closed', kind });
    assert.equal(statusText(r.state), text);
    assert.ok(!r.effects.some((e) => e.type === 'reconnect'));
    assert.equal(showNewStranger(r.state), true);
    const again = run(r.state, { type: 'newStranger' });
    assert.ok(again.effects.some((e) => e.type === 'connect'));
    assert.equal(statusText(again.state), 'Looking for a stranger…');
  }
  // 1013 right at Start chatting.
  const r = run(ready(), { type: 'start' }, { type: 'closed', kind: 'busy' });
  assert.equal(statusText(r.state), TEXT.busy);
});

test('lost connection: says so, ends the chat, New stranger looks again (retrying with backoff)', () => {
  let r = run(chatting(), { type: 'closed', kind: 'lost' });
  assert.equal(statusText(r.state), 'Connection lost.');
  assert.equal(r.state.messages.at(-1).text, 'Connection lost.');
  assert.equal(r.state.connected, false);
  assert.equal(showNewStranger(r.state), true);
  assert.equal(canSkip(r.state), false);
  assert.ok(r.effects.some((e) => e.type === 'reconnect'), 'the socket comes back in the background');
  assert.equal(hintText(r.state), '');
  // Back in the background: nothing is looked for until the user asks.
  const back = run(r.state, hello);
  assert.deepEqual(sent(back.effects), []);
  assert.equal(statusText(back.state), 'Connection lost.');
  assert.deepEqual(sent(run(back.state, { type: 'newStranger' }).effects), [{ type: 'find' }]);
  r = run(r.state, { type: 'newStranger' });
  assert.ok(r.effects.some((e) => e.type === 'connect'));
  r = run(r.state, { type: 'closed', kind: 'lost' });
  assert.equal(statusText(r.state), 'Connection lost.');
  assert.ok(r.effects.some((e) => e.type === 'reconnect'), 'the user asked: retry');
  r = run(r.state, hello, srv({ type: 'waiting' }));
  assert.equal(statusText(r.state), 'Looking for a stranger…');
});

test('the page connects on load; a socket closing on the landing view or after the chat ended reconnects quietly', () => {
  assert.deepEqual(run(ready(), { type: 'init' }).effects, [{ type: 'connect' }]);
  let r = run(chatting(), { type: 'stop' }, { type: 'closed', kind: 'restarting' });
  assert.equal(r.state.view, 'landing');
  assert.equal(statusText(r.state), '');
  assert.deepEqual(r.effects.filter((e) => e.type === 'reconnect'), [{ type: 'reconnect' }]);
  r = run(ready(), { type: 'closed', kind: 'busy' });
  assert.deepEqual(r.effects, [], 'after 1013, only when the user asks');
  r = run(chatting(), srv({ type: 'left', reason: 'disconnected' }), { type: 'closed', kind: 'lost' });
  assert.equal(statusText(r.state), 'Stranger has disconnected.');
  assert.ok(r.effects.some((e) => e.type === 'reconnect'));
  r = run(r.state, { type: 'newStranger' });
  assert.ok(r.effects.some((e) => e.type === 'connect'));
});

test('stop while the server restarts: once back, nothing is looked for', () => {
  const r = run(chatting(), { type: 'closed', kind: 'restarting' }, { type: 'stop' });
  assert.equal(r.state.wantFind, false);
  assert.deepEqual(sent(run(r.state, hello).effects), []);
});

test('interests: normalised like the server, comma and Enter, at most 10, no duplicates', () => {
  let r = takeInterests([], '  Music  ', true);
  assert.deepEqual(r, { list: ['music'], rest: '', error: null });
  r = takeInterests(['music'], 'Board\t  Games,MUSIC, chess', false);
  assert.deepEqual(r.list, ['music', 'board games']);
  assert.equal(r.rest, ' chess', 'the part after the last comma is still being typed');
  r = takeInterests([], 'a,,  ,b', true);
  assert.deepEqual(r.list, ['a', 'b']);
  r = takeInterests([], 'x'.repeat(33), true);
  assert.deepEqual(r.list, []);
  assert.equal(r.error, 'interest_too_long');
  assert.equal(r.rest, 'x'.repeat(33), 'kept for editing');
  assert.deepEqual(takeInterests([], ' ' + 'É'.repeat(32) + ' ', true).list, ['é'.repeat(32)]);
  const ten = Array.from({ length: 10 }, (_, i) => `t${i}`);
  r = takeInterests(ten, 'eleven', true);
  assert.deepEqual(r.list, ten);
  assert.equal(r.error, 'interest_too_many');
  r = takeInterests(ten, 't3', true);
  assert.equal(r.error, null, 'a duplicate is simply ignored');
  // The reducer keeps them and removes on request.
  let s = run(ready(), { type: 'setInterests', list: ['a', 'b'] }, { type: 'removeInterest', tag: 'a' }).state;
  assert.deepEqual(s.interests, ['b']);
});

test('small texts', () => {
  assert.equal(onlineText(12), '12 online');
  assert.equal(onlineText(null), '');
  assert.equal(counterText(1799), '');
  assert.equal(counterText(1800), '1800/2000');
  assert.equal(counterText(2001), '2001/2000');
});
