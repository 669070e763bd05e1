// Unit tests of web/state.js's safety side (PROTOCOL.md "Safety", "Page"): the 18+ gate, Report
// with its confirmation and grace window, the contact-detail warning, the banned notice, the
// proof of work attached to find, and that a server announcing no features changes nothing.
// Run: node --test tests/web-unit/

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  initialState, reduce, statusText, noticeText, showNewStranger, canSkip, canStart, canReport,
  bannedText, powBits, TEXT, REPORT_GRACE_MS,
} from '../../web/state.js';

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
const of = (effects, type) => effects.filter((e) => e.type === type);
const srv = (frame, now = 0) => ({ type: 'server', frame, now });
const SALT = '5f'.repeat(32);
const v1Hello = srv({ type: 'hello', version: 1, online: 3, features: [], challenge: null });
const helloWith = (features, bits = 0) =>
  srv({ type: 'hello', version: 1, online: 3, features, challenge: features.includes('pow') ? { salt: SALT, bits } : null });
const ready = () => initialState({ adult: true });
const err = (code, extra = {}) => srv({ type: 'error', code, message: '', retryAfter: null, ...extra });

/** Start, hello (with `features`), waiting, matched. */
function chatting(hello = helloWith(['report'])) {
  return run(ready(), { type: 'start' }, hello, srv({ type: 'waiting' }), srv({ type: 'matched', common: [] })).state;
}

// ---- the 18+ gate ------------------------------------------------------------------------------

test('18+: Start does nothing until the box is ticked; the tick is remembered', () => {
  let r = run(initialState(), { type: 'init' });
  assert.equal(canStart(r.state), false);
  r = run(r.state, { type: 'start' });
  assert.equal(r.state.view, 'landing', 'Start is refused without the tick');
  assert.deepEqual(r.effects, []);

  r = run(r.state, { type: 'adult', value: true });
  assert.equal(canStart(r.state), true);
  assert.deepEqual(of(r.effects, 'rememberAdult'), [{ type: 'rememberAdult', value: true }]);
  r = run(r.state, { type: 'start' });
  assert.equal(r.state.view, 'chat');

  r = run(initialState({ adult: true }), { type: 'adult', value: false });
  assert.equal(canStart(r.state), false);
  assert.deepEqual(of(r.effects, 'rememberAdult'), [{ type: 'rememberAdult', value: false }]);
  assert.equal(TEXT.adult, 'I am 18 or older');
  assert.ok(!Object.values(TEXT).some((t) => /verif/i.test(t)), 'never called verification');
});

// ---- a server without features -----------------------------------------------------------------

test('no features (a v1 server): find has no pow, no solving, no Report, contact warning still local', () => {
  for (const hello of [srv({ type: 'hello', version: 1, online: 3 }), v1Hello]) {
    let r = run(ready(), { type: 'start' }, hello);
    assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
    assert.deepEqual(of(r.effects, 'solve'), []);
    assert.equal(powBits(r.state), 0);
    r = run(r.state, srv({ type: 'waiting' }), srv({ type: 'matched', common: [] }));
    assert.equal(canReport(r.state), false, 'no Report without the feature');
    assert.equal(run(r.state, { type: 'reportOpen' }).state.reportDialog, false);
    r = run(r.state, srv({ type: 'left', reason: 'skipped' }, 1000));
    assert.equal(r.state.reportUntil, null, 'no grace window without the feature');
    assert.deepEqual(of(r.effects, 'timer').filter((t) => t.name === 'reportGrace'), []);
    assert.equal(canReport(r.state), false);
  }
  // A challenge without "pow" in features is ignored.
  const r = run(ready(), { type: 'start' }, srv({ type: 'hello', version: 1, online: 1, features: ['report'], challenge: { salt: SALT, bits: 12 } }));
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.deepEqual(of(r.effects, 'solve'), []);
});

// ---- proof of work -----------------------------------------------------------------------------

test('pow: bits 0 needs no work and find goes at once, without pow', () => {
  const r = run(ready(), { type: 'start' }, helloWith(['report', 'pow'], 0));
  assert.deepEqual(of(r.effects, 'solve'), []);
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
});

test('pow: solving starts on hello (on the landing view); find carries the digits', () => {
  let r = run(ready(), { type: 'init' }, helloWith(['pow'], 10));
  assert.deepEqual(of(r.effects, 'solve'), [{ type: 'solve', salt: SALT, bits: 10, from: 0 }]);
  assert.equal(r.state.view, 'landing');
  r = run(r.state, { type: 'solved', salt: SALT, pow: '2609' });
  assert.equal(r.state.pow, '2609');
  assert.deepEqual(sent(r.effects), [], 'nothing sent before Start');
  r = run(r.state, { type: 'setInterests', list: ['music'] }, { type: 'start' });
  assert.deepEqual(sent(r.effects), [{ type: 'find', interests: ['music'], pow: '2609' }], 'no wait when solved already');
  r = run(r.state, srv({ type: 'waiting' }), srv({ type: 'matched', common: [] }), { type: 'skip' });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }], 'skip never needs a pow');
  // Admitted: a later find needs none.
  r = run(r.state, srv({ type: 'waiting' }), { type: 'stop' }, srv({ type: 'idle' }), { type: 'start' });
  assert.deepEqual(sent(r.effects).at(-1), { type: 'find', interests: ['music'] });
});

test('pow: Start before the work is done waits for it, then sends find; a stale answer is ignored', () => {
  let r = run(ready(), { type: 'start' }, helloWith(['pow'], 12));
  assert.deepEqual(sent(r.effects), [], 'find waits for the proof of work');
  assert.equal(r.state.findAwaitsPow, true);
  assert.equal(statusText(r.state), TEXT.looking, 'silently: the user just sees "Looking"');
  assert.equal(canSkip(r.state), false, 'nothing to skip: the server has us idle');
  r = run(r.state, { type: 'solved', salt: 'ab'.repeat(32), pow: '7' });
  assert.deepEqual(sent(r.effects), [], 'an answer for another challenge is ignored');
  r = run(r.state, { type: 'solved', salt: SALT, pow: '1234' });
  assert.deepEqual(sent(r.effects), [{ type: 'find', pow: '1234' }]);
  assert.equal(r.state.pending, 'find');
});

test('pow: pow_invalid / pow_required solve again from past the refused answer and retry once', () => {
  let r = run(ready(), { type: 'start' }, helloWith(['pow'], 10), { type: 'solved', salt: SALT, pow: '2609' });
  assert.deepEqual(sent(r.effects), [{ type: 'find', pow: '2609' }]);
  r = run(r.state, err('pow_invalid'));
  assert.deepEqual(of(r.effects, 'solve'), [{ type: 'solve', salt: SALT, bits: 10, from: 2610 }]);
  assert.deepEqual(sent(r.effects), []);
  assert.equal(statusText(r.state), TEXT.looking, 'silently');
  assert.equal(noticeText(r.state), '');
  r = run(r.state, { type: 'solved', salt: SALT, pow: '3001' });
  assert.deepEqual(sent(r.effects), [{ type: 'find', pow: '3001' }]);
  // Refused again: no third try by itself; the user is told and may try again.
  r = run(r.state, err('pow_required'));
  assert.deepEqual(sent(r.effects), []);
  assert.deepEqual(of(r.effects, 'solve'), []);
  assert.equal(r.state.phase, 'error');
  assert.equal(statusText(r.state), TEXT.pow);
  assert.equal(showNewStranger(r.state), true);
  r = run(r.state, { type: 'newStranger' });
  assert.deepEqual(of(r.effects, 'solve'), [{ type: 'solve', salt: SALT, bits: 10, from: 3002 }]);
  r = run(r.state, { type: 'solved', salt: SALT, pow: '4000' }, err('pow_invalid'));
  assert.equal(r.state.phase, 'waiting', 'New stranger gives one more silent retry');
});

test('pow: a new socket brings a new challenge; the old work is cancelled and void', () => {
  let r = run(ready(), { type: 'start' }, helloWith(['pow'], 14));
  r = run(r.state, { type: 'closed', kind: 'restarting' });
  assert.equal(of(r.effects, 'cancelSolve').length, 1);
  assert.equal(r.state.wantFind, true, 'still looking once a socket is back');
  r = run(r.state, { type: 'solved', salt: SALT, pow: '99' });
  assert.deepEqual(sent(r.effects), [], 'work for a dead socket is void');
  const other = 'cd'.repeat(32);
  r = run(r.state, srv({ type: 'hello', version: 1, online: 1, features: ['pow'], challenge: { salt: other, bits: 9 } }));
  assert.deepEqual(of(r.effects, 'solve'), [{ type: 'solve', salt: other, bits: 9, from: 0 }]);
  r = run(r.state, { type: 'solved', salt: other, pow: '5' });
  assert.deepEqual(sent(r.effects), [{ type: 'find', pow: '5' }]);
});

test('pow: Stop while the work is not done sends nothing and forgets the find', () => {
  let r = run(ready(), { type: 'start' }, helloWith(['pow'], 12), { type: 'stop' });
  assert.deepEqual(sent(r.effects), []);
  assert.equal(r.state.view, 'landing');
  r = run(r.state, { type: 'solved', salt: SALT, pow: '8' });
  assert.deepEqual(sent(r.effects), [], 'solved later: kept for the next Start, nothing sent');
  r = run(r.state, { type: 'start' });
  assert.deepEqual(sent(r.effects), [{ type: 'find', pow: '8' }]);
});

// ---- report ------------------------------------------------------------------------------------

test('report while chatting: confirmation with reasons, the room ends, a thank-you and New stranger', () => {
  const s = chatting();
  assert.equal(canReport(s), true);
  let r = run(s, { type: 'reportOpen' });
  assert.equal(r.state.reportDialog, true);
  r = run(r.state, { type: 'reportCancel' });
  assert.equal(r.state.reportDialog, false);
  assert.deepEqual(sent(r.effects), [], 'cancel sends nothing');
  assert.equal(r.state.phase, 'chatting');

  r = run(r.state, { type: 'reportOpen' }, { type: 'reportConfirm', reason: 'harassment', now: 100 });
  assert.deepEqual(sent(r.effects), [{ type: 'report', reason: 'harassment' }]);
  assert.equal(r.state.reportDialog, false);
  assert.equal(r.state.phase, 'ended');
  assert.equal(statusText(r.state), TEXT.reporting);
  assert.equal(canReport(r.state), false, 'not twice');
  r = run(r.state, srv({ type: 'msg', text: 'late' }));
  assert.equal(r.state.messages.length, 0, 'the room is over: a late message is not shown');
  r = run(r.state, srv({ type: 'reported' }), srv({ type: 'idle' }));
  assert.equal(statusText(r.state), "Thanks for reporting. You won't meet this stranger again.");
  assert.equal(showNewStranger(r.state), true);
  r = run(r.state, { type: 'newStranger' });
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.equal(statusText(r.state), TEXT.looking);
});

test('report: reasons are the five of the protocol, the default is other', () => {
  for (const reason of ['spam', 'sexual', 'harassment', 'minor', 'other']) {
    const r = run(chatting(), { type: 'reportOpen' }, { type: 'reportConfirm', reason });
    assert.deepEqual(sent(r.effects), [{ type: 'report', reason }]);
  }
  for (const reason of [undefined, null, 'rude', '']) {
    const r = run(chatting(), { type: 'reportOpen' }, { type: 'reportConfirm', reason });
    assert.deepEqual(sent(r.effects), [{ type: 'report', reason: 'other' }]);
  }
  // Confirm without the dialog (a stale click) does nothing.
  assert.deepEqual(sent(run(chatting(), { type: 'reportConfirm', reason: 'spam' }).effects), []);
});

test('report: for the grace window after the partner left, then no more', () => {
  let r = run(chatting(), srv({ type: 'left', reason: 'skipped' }, 1000));
  assert.equal(canReport(r.state), true, 'Report stays for the grace window');
  assert.deepEqual(of(r.effects, 'timer').filter((t) => t.name === 'reportGrace'), [{ type: 'timer', name: 'reportGrace', ms: REPORT_GRACE_MS }]);
  assert.equal(run(r.state, { type: 'reportGraceExpire', now: 1000 + REPORT_GRACE_MS - 1 }).state.reportUntil, 1000 + REPORT_GRACE_MS);
  const expired = run(r.state, { type: 'reportGraceExpire', now: 1000 + REPORT_GRACE_MS });
  assert.equal(canReport(expired.state), false, 'gone after 60 s');

  r = run(r.state, { type: 'reportOpen' }, { type: 'reportConfirm', reason: 'spam', now: 5000 });
  assert.deepEqual(sent(r.effects), [{ type: 'report', reason: 'spam' }]);
  assert.equal(statusText(r.state), TEXT.disconnected, 'until the server answers');
  r = run(r.state, srv({ type: 'reported' }));
  assert.equal(statusText(r.state), TEXT.reported);
  assert.equal(showNewStranger(r.state), true);
  assert.equal(canReport(r.state), false);
});

test('report: a bad_state answer (the server\'s window was shorter) is tolerated quietly', () => {
  let r = run(chatting(), srv({ type: 'left', reason: 'disconnected' }, 0), { type: 'reportOpen' }, { type: 'reportConfirm', reason: 'other' });
  r = run(r.state, err('bad_state'));
  assert.equal(statusText(r.state), TEXT.disconnected);
  assert.equal(noticeText(r.state), '');
  assert.equal(r.state.reportPending, null);
  assert.equal(canReport(r.state), false);
  assert.deepEqual(sent(r.effects), []);
});

test('report after our own skip: still queued, the thank-you is a notice', () => {
  let r = run(chatting(), { type: 'skip', now: 10 });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }]);
  assert.equal(canReport(r.state), true, 'the stranger we just skipped can be reported');
  r = run(r.state, srv({ type: 'waiting' }), { type: 'reportOpen' }, { type: 'reportConfirm', reason: 'sexual', now: 20 });
  assert.deepEqual(sent(r.effects), [{ type: 'report', reason: 'sexual' }]);
  r = run(r.state, srv({ type: 'reported', now: 30 }));
  assert.equal(statusText(r.state), TEXT.skipped, 'still queued: "You skipped." until the next match');
  assert.equal(r.state.phase, 'ended');
  assert.equal(noticeText(r.state), TEXT.reported);
  // A new match ends the window.
  r = run(r.state, srv({ type: 'matched', common: [] }), srv({ type: 'left', reason: 'skipped' }, 100));
  assert.equal(canReport(r.state), true, 'the new partner can be reported');
});

test('report: rate_limited sends it again; a closed socket ends the window and the dialog', () => {
  let r = run(chatting(), { type: 'reportOpen' }, { type: 'reportConfirm', reason: 'minor' }, err('rate_limited'));
  assert.ok(of(r.effects, 'timer').some((t) => t.name === 'retryControl'));
  r = run(r.state, { type: 'retryControl' });
  assert.deepEqual(sent(r.effects), [{ type: 'report', reason: 'minor' }]);

  r = run(chatting(), srv({ type: 'left', reason: 'skipped' }), { type: 'reportOpen' }, { type: 'closed', kind: 'lost' });
  assert.equal(r.state.reportDialog, false);
  assert.equal(canReport(r.state), false);
});

// ---- contact-detail warning --------------------------------------------------------------------

test('contact details: held back with a warning; Edit keeps the text; Send anyway sends it', () => {
  let r = run(chatting(v1Hello), { type: 'send', text: 'my snap is johnny99', allowed: true });
  assert.deepEqual(sent(r.effects), [], 'nothing leaves the page');
  assert.equal(r.state.contactWarning, 'my snap is johnny99');
  assert.ok(r.effects.some((e) => e.type === 'focus' && e.target === 'contactEdit'));
  assert.ok(!r.effects.some((e) => e.type === 'clearDraft'), 'the text stays in the box');

  const edit = run(r.state, { type: 'editContact' });
  assert.equal(edit.state.contactWarning, null);
  assert.deepEqual(sent(edit.effects), []);
  assert.ok(edit.effects.some((e) => e.type === 'focus' && e.target === 'message'));
  assert.equal(run(r.state, { type: 'esc' }).state.contactWarning, null, 'Esc is Edit');
  assert.equal(run(r.state, { type: 'esc' }).state.escAt, null, 'and does not start a skip');

  const anyway = run(r.state, { type: 'sendAnyway', allowed: true });
  assert.deepEqual(sent(anyway.effects), [{ type: 'msg', text: 'my snap is johnny99' }]);
  assert.equal(anyway.state.contactWarning, null);
  assert.equal(anyway.state.messages.at(-1).text, 'my snap is johnny99');
  assert.ok(anyway.effects.some((e) => e.type === 'clearDraft'));

  // Changing the text closes the warning; ordinary text is sent without one.
  assert.equal(run(r.state, { type: 'input', text: 'my snap is' }).state.contactWarning, null);
  const plain = run(chatting(v1Hello), { type: 'send', text: "I'm 25 and I write 2000 characters", allowed: true });
  assert.deepEqual(sent(plain.effects), [{ type: 'msg', text: "I'm 25 and I write 2000 characters" }]);
  // The partner leaving takes the warning away.
  assert.equal(run(r.state, srv({ type: 'left', reason: 'skipped' })).state.contactWarning, null);
});

// ---- banned ------------------------------------------------------------------------------------

test('banned: plain words with the minutes left, rounded up; New stranger asks again', () => {
  assert.equal(bannedText(3541), 'Several people reported chats from your network. You can chat again in 60 minutes.');
  assert.equal(bannedText(3601), 'Several people reported chats from your network. You can chat again in 61 minutes.');
  assert.equal(bannedText(1), 'Several people reported chats from your network. You can chat again in 1 minute.');
  assert.equal(bannedText(60), 'Several people reported chats from your network. You can chat again in 1 minute.');
  assert.equal(bannedText(61), 'Several people reported chats from your network. You can chat again in 2 minutes.');

  let r = run(ready(), { type: 'start' }, v1Hello, err('banned', { retryAfter: 125 }));
  assert.equal(r.state.phase, 'error');
  assert.equal(statusText(r.state), 'Several people reported chats from your network. You can chat again in 3 minutes.');
  assert.equal(showNewStranger(r.state), true);
  assert.equal(r.state.wantFind, false);
  r = run(r.state, { type: 'newStranger' });
  assert.deepEqual(sent(r.effects), [{ type: 'find' }]);
  assert.equal(statusText(r.state), TEXT.looking);
});

test('banned after a skip: the skip was refused and the room still stands, so the page leaves it', () => {
  let r = run(chatting(), { type: 'skip' });
  assert.deepEqual(sent(r.effects), [{ type: 'skip' }]);
  r = run(r.state, err('banned', { retryAfter: 3600 }));
  assert.deepEqual(sent(r.effects), [{ type: 'stop' }]);
  assert.equal(statusText(r.state), bannedText(3600));
  r = run(r.state, srv({ type: 'idle' }));
  assert.equal(r.state.pending, null);
  assert.equal(statusText(r.state), bannedText(3600));
});
