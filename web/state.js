// state.js — the page's state machine, as a pure reducer: reduce(state, action) -> {state, effects}.
// Owns: the views (landing, chat), the chat phases (waiting, chatting, ended, error), the
// conversation shown, interests, unread count, the Esc-to-skip confirmation, when our own typing
// starts and stops, notices, and every text the user reads (docs/ui-contract.md).
// Safety (PROTOCOL.md "Safety", used only when hello.features names it): the 18+ notice that
// gates Start, Report with its confirmation and grace window, the contact-detail warning, the
// banned notice, and the proof of work attached to `find`.
// No DOM, no sockets, no clock: time arrives as `now` on actions; effects say what app.js must do
// ({type:'send', frame}, 'connect', 'reconnect', {type:'timer', name, ms},
// {type:'focus', target}, 'clearDraft', 'alert', 'askNotify', {type:'rememberAdult', value},
// {type:'solve', salt, bits, from}, 'cancelSolve').

import { normalizeInterest, charCount, checkText, MAX_INTERESTS, MAX_INTEREST_CHARS, MAX_TEXT_CHARS } from './protocol.js';
import { looksLikeContact } from './contact.js';

export const ESC_CONFIRM_MS = 3000;
export const TYPING_IDLE_MS = 2000;
export const NOTICE_MS = 4000;
export const RETRY_CONTROL_MS = 1500;
export const COUNTER_FROM = 1800;
/** PROTOCOL.md's REPORT_GRACE_SECS default; the page cannot know the server's own setting. */
export const REPORT_GRACE_MS = 60_000;
export const REPORT_REASONS = ['spam', 'sexual', 'harassment', 'minor', 'other'];

export const TEXT = {
  title: 'stranger-relay',
  looking: 'Looking for a stranger…',
  disconnected: 'Stranger has disconnected.',
  skipped: 'You skipped.',
  restarting: 'The server is restarting…',
  busy: 'Too many connections from your network or to the server, try again soon.',
  abuse: 'Disconnected for sending too fast.',
  lost: 'Connection lost.',
  escConfirm: 'Press Esc again to skip.',
  reconnecting: 'Reconnecting…',
  rate_limited: "You're sending messages too fast.",
  too_long: 'That message is too long.',
  interest_too_long: `An interest can be at most ${MAX_INTEREST_CHARS} characters.`,
  interest_too_many: `You can add at most ${MAX_INTERESTS} interests.`,
  adult: 'I am 18 or older',
  reporting: 'Sending your report…',
  reported: "Thanks for reporting. You won't meet this stranger again.",
  pow: "Couldn't start a chat just now. Please try again.",
  contactWarning:
    'This looks like contact details. Strangers may not be who they say they are, and a phone ' +
    'number, e-mail or handle lets them find you outside this chat.',
};

/** The banned notice, minutes left rounded up (PROTOCOL.md, "Page"). */
export function bannedText(retryAfterSecs) {
  const head = 'Several people reported chats from your network.';
  if (!Number.isFinite(retryAfterSecs) || retryAfterSecs <= 0) return `${head} You can chat again later.`;
  const n = Math.max(1, Math.ceil(retryAfterSecs / 60));
  return `${head} You can chat again in ${n} ${n === 1 ? 'minute' : 'minutes'}.`;
}

export function matchedText(common) {
  return common.length
    ? `You're now chatting with a random stranger. You both like: ${common.join(', ')}. Say hi!`
    : "You're now chatting with a random stranger. Say hi!";
}

export function initialState({ adult = false } = {}) {
  return {
    adult, // the 18+ box is ticked (remembered by app.js in localStorage)
    view: 'landing', // 'landing' | 'chat'
    phase: 'idle', // 'idle' | 'waiting' | 'chatting' | 'ended' | 'error'
    endReason: null, // phase 'ended': 'disconnected' | 'skipped' (then the server has us queued)
    error: null, // phase 'error': 'restarting' | 'busy' | 'abuse' | 'lost' | 'banned' | 'pow'
    banSecs: null, // error 'banned': seconds left when it was said
    connected: false, // a socket greeted us with hello
    wantFind: false, // send find as soon as a socket greets us
    pending: null, // control command sent and not yet answered: 'find' | 'skip' | 'stop'
    interests: [],
    interestError: null,
    common: [],
    messages: [], // {id, kind: 'me' | 'stranger' | 'system', text, failed?}
    nextId: 1,
    partnerTyping: false,
    typing: false, // we told the partner we are typing
    lastInputAt: 0,
    escAt: null, // time of an Esc still waiting for its confirmation
    hidden: false,
    unread: 0,
    notice: null, // {code, until}
    online: null,
    // What this socket's server announced (hello.features; none from a v1 server).
    features: [],
    // Proof of work: this socket's challenge {salt, bits}, a solution for it, where the next
    // search starts, whether a worker is on it, whether a find waits for it, whether the one
    // retry after pow_required / pow_invalid is spent, and whether the server admitted us.
    challenge: null,
    pow: null,
    powFrom: 0,
    solving: false,
    findAwaitsPow: false,
    powRetried: false,
    admitted: false,
    // Report: the last room's partner can be reported until this time (ms), after the room ended.
    reportUntil: null,
    reportDialog: false,
    reportPending: null, // the reason of a report sent and not yet answered
    contactWarning: null, // the text held back by the contact-detail warning
  };
}

// ---- interests -------------------------------------------------------------------------------

/**
 * Adds what the Interests field holds to `list`. With `all` false (typing) only the parts before
 * a comma are taken and the text after the last comma stays; with `all` (Enter) everything is.
 * Returns {list, rest (the field's new text), error: null | 'interest_too_long' | 'interest_too_many'}.
 */
export function takeInterests(list, value, all) {
  const parts = value.split(',');
  let rest = all ? '' : parts.pop();
  const out = [...list];
  const kept = [];
  let error = null;
  for (const raw of parts) {
    const tag = normalizeInterest(raw);
    if (tag === '' || out.includes(tag)) continue;
    if (charCount(tag) > MAX_INTEREST_CHARS) {
      error = 'interest_too_long';
      kept.push(raw.trim());
    } else if (out.length >= MAX_INTERESTS) {
      error = 'interest_too_many';
    } else {
      out.push(tag);
    }
  }
  if (kept.length) rest = [...kept, rest].filter((p) => p !== '').join(' ');
  return { list: out, rest, error };
}

// ---- what the page shows, derived --------------------------------------------------------------

export function statusText(s) {
  switch (s.phase) {
    case 'waiting': return TEXT.looking;
    case 'chatting': return matchedText(s.common);
    case 'ended':
      if (s.endReason === 'skipped') return TEXT.skipped;
      if (s.endReason === 'reporting') return TEXT.reporting;
      if (s.endReason === 'reported') return TEXT.reported;
      return TEXT.disconnected;
    case 'error': return s.error === 'banned' ? bannedText(s.banSecs) : (TEXT[s.error] ?? TEXT.lost);
    default: return '';
  }
}

export function hintText(s) {
  if (s.escAt !== null) return TEXT.escConfirm;
  if (s.phase === 'error' && s.wantFind) return TEXT.reconnecting;
  return '';
}

export const noticeText = (s) => (s.notice ? TEXT[s.notice.code] : '');
export const titleText = (s) => (s.unread > 0 ? `(${s.unread}) New message` : TEXT.title);
export const onlineText = (n) => (Number.isFinite(n) ? `${n} online` : '');
export const counterText = (n) => (n >= COUNTER_FROM ? `${n}/${MAX_TEXT_CHARS}` : '');
/** New stranger is offered once a chat is over for good: partner gone, reported, or trouble. */
export const showNewStranger = (s) =>
  s.view === 'chat' &&
  ((s.phase === 'ended' && (s.endReason === 'disconnected' || s.endReason === 'reported')) || s.phase === 'error');
/** The server has us queued or in a room (not while our find still waits for its proof of work). */
const queued = (s) =>
  !s.findAwaitsPow &&
  (s.phase === 'waiting' || s.phase === 'chatting' || (s.phase === 'ended' && s.endReason === 'skipped'));
export const canSkip = (s) => s.view === 'chat' && s.connected && queued(s);
export const canStart = (s) => s.adult;
export const hasFeature = (s, name) => s.features.includes(name);
/** Report is offered while chatting, and for the grace window after the room ended. */
export const canReport = (s) =>
  hasFeature(s, 'report') && s.view === 'chat' && s.connected &&
  (s.phase === 'chatting' || s.reportUntil !== null);
/** Difficulty of this socket's challenge; 0 when the server asked for no work. */
export const powBits = (s) => (hasFeature(s, 'pow') && s.challenge ? s.challenge.bits : 0);
const needsPow = (s) => powBits(s) > 0 && !s.admitted;

// ---- the reducer -----------------------------------------------------------------------------

export function reduce(state, action) {
  const fx = [];
  return { state: step(state, action, fx), effects: fx };
}

const send = (fx, frame) => fx.push({ type: 'send', frame });
function findFrame(s) {
  const f = s.interests.length ? { type: 'find', interests: s.interests } : { type: 'find' };
  return needsPow(s) && s.pow !== null ? { ...f, pow: s.pow } : f;
}

/** Sends find, or, when the server asked for work and it is not done yet, has it sent once solved. */
function sendFind(s, fx) {
  if (needsPow(s) && s.pow === null) {
    let next = { ...s, findAwaitsPow: true, pending: null };
    if (!s.solving) {
      fx.push({ type: 'solve', salt: s.challenge.salt, bits: s.challenge.bits, from: s.powFrom });
      next = { ...next, solving: true };
    }
    return next;
  }
  send(fx, findFrame(s));
  return { ...s, findAwaitsPow: false, pending: 'find' };
}

/** The room ended while this socket lives: its partner can still be reported for a while. */
function graceStarts(s, now, fx) {
  if (!hasFeature(s, 'report')) return s;
  fx.push({ type: 'timer', name: 'reportGrace', ms: REPORT_GRACE_MS });
  return { ...s, reportUntil: now + REPORT_GRACE_MS };
}

function line(s, kind, text) {
  return { ...s, messages: [...s.messages, { id: s.nextId, kind, text }], nextId: s.nextId + 1 };
}

function notice(s, code, now, fx) {
  fx.push({ type: 'timer', name: 'notice', ms: NOTICE_MS });
  return { ...s, notice: { code, until: now + NOTICE_MS } };
}

/** Leaves whatever room we were in, locally: nobody types, no Esc pending, no warning. */
const quiet = (s) => ({ ...s, typing: false, partnerTyping: false, escAt: null, contactWarning: null });

/** Ask for a stranger: now if a socket is up, else as soon as one greets us. */
function lookFor(s, fx) {
  const next = { ...quiet(s), phase: 'waiting', endReason: null, error: null };
  if (!s.connected) {
    fx.push({ type: 'connect' }); // opens a socket unless one is open or opening
    return { ...next, wantFind: true };
  }
  return sendFind({ ...next, wantFind: false }, fx);
}

/** New stranger (the button, or Skip / Esc once the chat is over): the button goes, focus to the status. */
function again(s, fx) {
  fx.push({ type: 'focus', target: 'status' });
  return lookFor({ ...s, powRetried: false, banSecs: null }, fx);
}

function skip(s, now, fx) {
  if (showNewStranger(s)) return again(s, fx);
  if (!canSkip(s)) return s;
  send(fx, { type: 'skip' });
  const next = { ...quiet(s), pending: 'skip' };
  if (s.phase !== 'chatting') return next;
  return line(graceStarts({ ...next, phase: 'ended', endReason: 'skipped' }, now, fx), 'system', TEXT.skipped);
}

function sendMessage(s, a, now, fx) {
  if (s.phase !== 'chatting') return s;
  const check = checkText(a.text);
  if (check === 'empty') return s;
  if (check === 'too_long') return notice(s, 'too_long', now, fx);
  if (!a.force && looksLikeContact(a.text)) {
    // Held back on the page: nothing about it is sent until the user says "Send anyway".
    fx.push({ type: 'focus', target: 'contactEdit' });
    return { ...s, contactWarning: a.text };
  }
  if (a.allowed === false) return notice({ ...s, contactWarning: null }, 'rate_limited', now, fx);
  send(fx, { type: 'msg', text: a.text });
  if (s.typing) send(fx, { type: 'typing', active: false });
  fx.push({ type: 'clearDraft' });
  return line({ ...s, typing: false, contactWarning: null }, 'me', a.text);
}

function report(s, reason, now, fx) {
  if (!canReport(s)) return { ...s, reportDialog: false };
  const r = REPORT_REASONS.includes(reason) ? reason : 'other';
  send(fx, { type: 'report', reason: r });
  const next = { ...s, reportDialog: false, reportPending: r, reportUntil: null };
  if (s.phase !== 'chatting') {
    fx.push({ type: 'focus', target: 'afterReport' });
    return next;
  }
  // The server ends the room at once (we get reported, then idle; the partner gets left).
  fx.push({ type: 'focus', target: 'status' });
  return { ...quiet(next), phase: 'ended', endReason: 'reporting' };
}

function step(s, a, fx) {
  const now = a.now ?? 0;
  switch (a.type) {
    case 'setInterests':
      return { ...s, interests: a.list.slice(0, MAX_INTERESTS), interestError: a.error ?? null };
    case 'removeInterest':
      return { ...s, interests: s.interests.filter((t) => t !== a.tag), interestError: null };
    case 'online':
      return { ...s, online: a.online };
    case 'visibility':
      return { ...s, hidden: a.hidden, unread: a.hidden ? s.unread : 0 };

    case 'init': // the page loaded: connect at once, so Start is instant and we count as online
      if (!s.connected) fx.push({ type: 'connect' });
      return s;
    case 'adult': // the "I am 18 or older" box
      fx.push({ type: 'rememberAdult', value: Boolean(a.value) });
      return { ...s, adult: Boolean(a.value) };
    case 'start': // Start chatting, on the landing view (only once the 18+ box is ticked)
      if (!canStart(s) || s.view !== 'landing') return s;
      fx.push({ type: 'askNotify' }, { type: 'focus', target: 'status' });
      return lookFor({ ...s, view: 'chat', messages: [], unread: 0, notice: null, powRetried: false, banSecs: null }, fx);
    case 'newStranger':
      return s.view === 'chat' && !queued(s) ? again(s, fx) : s;
    case 'skip':
      return skip(s, now, fx);
    case 'esc':
      if (s.view !== 'chat') return s;
      if (s.reportDialog) return { ...s, reportDialog: false }; // the dialog's own Esc: cancel
      if (s.contactWarning !== null) return step(s, { type: 'editContact' }, fx);
      if (s.phase === 'chatting') {
        if (s.escAt !== null && now - s.escAt <= ESC_CONFIRM_MS) return skip(s, now, fx);
        fx.push({ type: 'timer', name: 'esc', ms: ESC_CONFIRM_MS });
        return { ...s, escAt: now };
      }
      return skip(s, now, fx);
    case 'escExpire':
      return s.escAt !== null && now - s.escAt >= ESC_CONFIRM_MS ? { ...s, escAt: null } : s;
    case 'stop': {
      if (s.view !== 'chat') return s;
      let next = s;
      if (s.connected && queued(s)) {
        send(fx, { type: 'stop' });
        next = { ...s, pending: 'stop' };
      }
      fx.push({ type: 'focus', target: 'start' });
      return {
        ...quiet(next), view: 'landing', phase: 'idle', endReason: null, error: null,
        wantFind: false, findAwaitsPow: false, messages: [], common: [], unread: 0, notice: null,
        reportUntil: null, reportDialog: false, banSecs: null,
      };
    }

    case 'input': { // the Message box changed
      if (s.phase !== 'chatting') return s;
      if (s.contactWarning !== null && a.text !== s.contactWarning) s = { ...s, contactWarning: null };
      const active = checkText(a.text) !== 'empty';
      if (active) {
        fx.push({ type: 'timer', name: 'typing', ms: TYPING_IDLE_MS });
        if (!s.typing) send(fx, { type: 'typing', active: true });
        return { ...s, typing: true, lastInputAt: now };
      }
      if (s.typing) send(fx, { type: 'typing', active: false });
      return { ...s, typing: false };
    }
    case 'typingExpire': {
      if (!s.typing || s.phase !== 'chatting') return s;
      const left = s.lastInputAt + TYPING_IDLE_MS - now;
      if (left > 0) {
        fx.push({ type: 'timer', name: 'typing', ms: left });
        return s;
      }
      send(fx, { type: 'typing', active: false });
      return { ...s, typing: false };
    }
    case 'send': // Enter or the Send button; `allowed` is false when the local allowance is spent
      return sendMessage(s, a, now, fx);
    case 'sendAnyway': // the contact-detail warning's "Send anyway": the text it held back
      if (s.contactWarning === null) return s;
      fx.push({ type: 'focus', target: 'message' });
      return sendMessage(s, { text: s.contactWarning, allowed: a.allowed, force: true }, now, fx);
    case 'editContact': // the warning's "Edit": back to the Message box, the text as it was
      if (s.contactWarning === null) return s;
      fx.push({ type: 'focus', target: 'message' });
      return { ...s, contactWarning: null };

    case 'reportOpen':
      return canReport(s) ? { ...s, reportDialog: true, escAt: null } : s;
    case 'reportCancel':
      if (!s.reportDialog) return s;
      fx.push({ type: 'focus', target: 'afterReport' });
      return { ...s, reportDialog: false };
    case 'reportConfirm':
      return s.reportDialog ? report(s, a.reason, now, fx) : s;
    case 'reportGraceExpire':
      return s.reportUntil !== null && now >= s.reportUntil ? { ...s, reportUntil: null } : s;

    case 'solved': // the worker found a proof of work for this socket's challenge
      if (!s.challenge || a.salt !== s.challenge.salt || typeof a.pow !== 'string') return s;
      s = { ...s, pow: a.pow, solving: false, powFrom: Number(a.pow) + 1 };
      return s.findAwaitsPow && s.connected ? sendFind(s, fx) : s;
    case 'noticeExpire':
      return s.notice && now >= s.notice.until ? { ...s, notice: null } : s;
    case 'retryControl': // a control command was refused as rate_limited: say it again
      if (!s.connected) return s;
      if (s.reportPending) send(fx, { type: 'report', reason: s.reportPending });
      if (!s.pending) return s;
      if (s.pending === 'find') return sendFind(s, fx);
      send(fx, { type: s.pending });
      return s;

    case 'server':
      return server(s, a.frame, now, fx);
    case 'closed':
      return closed(s, a.kind, fx);
    default:
      return s;
  }
}

function server(s, f, now, fx) {
  switch (f.type) {
    case 'hello': {
      // A new socket: its own features and challenge; any earlier work is void.
      const features = Array.isArray(f.features) ? f.features : [];
      let next = {
        ...s, connected: true, pending: null, online: f.online ?? s.online,
        features, challenge: features.includes('pow') ? (f.challenge ?? null) : null,
        pow: null, powFrom: 0, solving: false, findAwaitsPow: false, admitted: false,
        reportUntil: null, reportPending: null,
      };
      if (s.solving) fx.push({ type: 'cancelSolve' });
      // Solve at once, while the user reads the notice: Start then needs no wait.
      if (powBits(next) > 0) {
        fx.push({ type: 'solve', salt: next.challenge.salt, bits: next.challenge.bits, from: 0 });
        next = { ...next, solving: true };
      }
      return next.wantFind && next.view === 'chat' ? lookFor(next, fx) : { ...next, wantFind: false };
    }
    case 'waiting':
      if (s.pending === 'find') return { ...s, pending: null, admitted: true };
      return s.pending === 'skip' ? { ...s, pending: null } : s;
    case 'reported': {
      const next = { ...s, reportPending: null };
      if (s.view !== 'chat') return next;
      if (s.phase === 'ended' && (s.endReason === 'reporting' || s.endReason === 'disconnected')) {
        return { ...next, endReason: 'reported' };
      }
      return notice(next, 'reported', now, fx); // still queued (we had skipped): said in #notice
    }
    case 'idle':
      return s.pending === 'stop' ? { ...s, pending: null } : s;
    case 'matched': {
      if (s.view !== 'chat') {
        // We left already (our stop is on its way) — or, should that ever go wrong, leave now.
        if (s.pending === 'stop') return s;
        send(fx, { type: 'stop' });
        return { ...s, pending: 'stop' };
      }
      fx.push({ type: 'focus', target: 'message' });
      if (s.hidden) fx.push({ type: 'alert' });
      // Said once, by the status line (role="status"): a copy in the log would be read twice.
      return {
        ...quiet(s), phase: 'chatting', endReason: null, pending: null, common: f.common, messages: [],
        admitted: true, reportUntil: null, reportDialog: false,
      };
    }
    case 'msg':
      if (s.phase !== 'chatting') return s; // raced a skip: belongs to a room we left
      return line({ ...s, partnerTyping: false, unread: s.hidden ? s.unread + 1 : 0 }, 'stranger', f.text);
    case 'typing':
      return s.phase === 'chatting' ? { ...s, partnerTyping: f.active } : s;
    case 'left':
      if (s.phase !== 'chatting') return s; // the room we skipped out of
      fx.push({ type: 'focus', target: 'ended' });
      return line(graceStarts({ ...quiet(s), phase: 'ended', endReason: 'disconnected' }, now, fx), 'system', TEXT.disconnected);
    case 'error':
      switch (f.code) {
        case 'rate_limited':
          if (s.pending || s.reportPending) fx.push({ type: 'timer', name: 'retryControl', ms: RETRY_CONTROL_MS });
          return notice(s, 'rate_limited', now, fx);
        case 'too_long': {
          const i = s.messages.findLastIndex((m) => m.kind === 'me');
          const messages = i < 0 ? s.messages : s.messages.with(i, { ...s.messages[i], failed: true });
          return notice({ ...s, messages }, 'too_long', now, fx);
        }
        case 'bad_state':
          // Quietly. A refused skip means the partner had already left and we are idle: queue up.
          if (s.pending === 'skip' && s.view === 'chat') return sendFind(s, fx);
          if (s.pending === 'stop') return { ...s, pending: null };
          // A report after the server's grace window (it may be shorter than ours): let it go.
          return s.reportPending ? { ...s, reportPending: null, reportUntil: null } : s;
        case 'banned': {
          // Refuses find and skip only; a refused skip left us in the room: leave it for real.
          let next = { ...quiet(s), wantFind: false, findAwaitsPow: false, pending: null };
          if (s.pending === 'skip') {
            send(fx, { type: 'stop' });
            next = { ...next, pending: 'stop' };
          }
          if (s.view !== 'chat') return next;
          fx.push({ type: 'focus', target: 'ended' });
          return { ...next, phase: 'error', error: 'banned', endReason: null, banSecs: f.retryAfter ?? null };
        }
        case 'pow_required':
        case 'pow_invalid': {
          if (s.pending !== 'find') return s;
          // Solve again (from past the refused answer) and retry once, silently.
          if (!s.powRetried) return sendFind({ ...s, pow: null, pending: null, powRetried: true }, fx);
          if (s.view !== 'chat') return { ...s, pending: null, pow: null };
          fx.push({ type: 'focus', target: 'ended' });
          return { ...quiet(s), pending: null, pow: null, phase: 'error', error: 'pow', endReason: null, wantFind: false };
        }
        default:
          return s; // bad_request: nothing the user can act on
      }
    default:
      return s;
  }
}

function closed(s, kind, fx) {
  // The page keeps a socket open whenever it can (the online count counts open pages), so it
  // reconnects in the background, except after 1013 or 1008: then only when the user asks.
  const shown = s.phase === 'error' && s.error === 'restarting' && kind === 'lost' ? 'restarting' : kind;
  if (shown === 'restarting' || shown === 'lost') fx.push({ type: 'reconnect' });
  if (s.solving) fx.push({ type: 'cancelSolve' });
  // The challenge, its work and the report window die with the socket.
  const next = {
    ...quiet(s), connected: false, pending: null, challenge: null, pow: null, solving: false,
    findAwaitsPow: false, admitted: false, reportUntil: null, reportDialog: false, reportPending: null,
  };
  const asking = s.wantFind || s.findAwaitsPow;
  if (!(s.view === 'chat' && (asking || queued(s)))) return next;
  // Looking again by itself only after a restart, or when the user was already asking.
  const wantFind = shown === 'restarting' || (kind === 'lost' && asking);
  let out = { ...next, phase: 'error', error: shown, endReason: null, wantFind };
  if (s.phase === 'chatting' || s.phase === 'ended') {
    fx.push({ type: 'focus', target: 'ended' });
    out = line(out, 'system', TEXT[shown]);
  }
  return out;
}
