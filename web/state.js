// state.js — the page's state machine, as a pure reducer: reduce(state, action) -> {state, effects}.
// Owns: the views (landing, chat), the chat phases (waiting, chatting, ended, error), the
// conversation shown, interests, unread count, the Esc-to-skip confirmation, when our own typing
// starts and stops, notices, and every text the user reads (docs/ui-contract.md).
// No DOM, no sockets, no clock: time arrives as `now` on actions; effects say what app.js must do
// ({type:'send', frame}, 'connect', 'reconnect', {type:'timer', name, ms},
// {type:'focus', target}, 'clearDraft', 'alert', 'askNotify').

import { normalizeInterest, charCount, checkText, MAX_INTERESTS, MAX_INTEREST_CHARS, MAX_TEXT_CHARS } from './protocol.js';

export const ESC_CONFIRM_MS = 3000;
export const TYPING_IDLE_MS = 2000;
export const NOTICE_MS = 4000;
export const RETRY_CONTROL_MS = 1500;
export const COUNTER_FROM = 1800;

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
};

export function matchedText(common) {
  return common.length
    ? `You're now chatting with a random stranger. You both like: ${common.join(', ')}. Say hi!`
    : "You're now chatting with a random stranger. Say hi!";
}

export function initialState() {
  return {
    view: 'landing', // 'landing' | 'chat'
    phase: 'idle', // 'idle' | 'waiting' | 'chatting' | 'ended' | 'error'
    endReason: null, // phase 'ended': 'disconnected' | 'skipped' (then the server has us queued)
    error: null, // phase 'error': 'restarting' | 'busy' | 'abuse' | 'lost'
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
    case 'ended': return s.endReason === 'skipped' ? TEXT.skipped : TEXT.disconnected;
    case 'error': return TEXT[s.error] ?? TEXT.lost;
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
/** New stranger is offered once a chat is over for good: partner gone or connection trouble. */
export const showNewStranger = (s) =>
  s.view === 'chat' && ((s.phase === 'ended' && s.endReason === 'disconnected') || s.phase === 'error');
/** The server has us queued or in a room. */
const queued = (s) =>
  s.phase === 'waiting' || s.phase === 'chatting' || (s.phase === 'ended' && s.endReason === 'skipped');
export const canSkip = (s) => s.view === 'chat' && s.connected && queued(s);

// ---- the reducer -----------------------------------------------------------------------------

export function reduce(state, action) {
  const fx = [];
  return { state: step(state, action, fx), effects: fx };
}

const send = (fx, frame) => fx.push({ type: 'send', frame });
const findFrame = (s) => (s.interests.length ? { type: 'find', interests: s.interests } : { type: 'find' });

function line(s, kind, text) {
  return { ...s, messages: [...s.messages, { id: s.nextId, kind, text }], nextId: s.nextId + 1 };
}

function notice(s, code, now, fx) {
  fx.push({ type: 'timer', name: 'notice', ms: NOTICE_MS });
  return { ...s, notice: { code, until: now + NOTICE_MS } };
}

/** Leaves whatever room we were in, locally: nobody types, no Esc pending. */
const quiet = (s) => ({ ...s, typing: false, partnerTyping: false, escAt: null });

/** Ask for a stranger: now if a socket is up, else as soon as one greets us. */
function lookFor(s, fx) {
  const next = { ...quiet(s), phase: 'waiting', endReason: null, error: null };
  if (!s.connected) {
    fx.push({ type: 'connect' }); // opens a socket unless one is open or opening
    return { ...next, wantFind: true };
  }
  send(fx, findFrame(s));
  return { ...next, wantFind: false, pending: 'find' };
}

/** New stranger (the button, or Skip / Esc once the chat is over): the button goes, focus to the status. */
function again(s, fx) {
  fx.push({ type: 'focus', target: 'status' });
  return lookFor(s, fx);
}

function skip(s, fx) {
  if (showNewStranger(s)) return again(s, fx);
  if (!canSkip(s)) return s;
  send(fx, { type: 'skip' });
  const next = { ...quiet(s), pending: 'skip' };
  if (s.phase !== 'chatting') return next;
  return line({ ...next, phase: 'ended', endReason: 'skipped' }, 'system', TEXT.skipped);
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
    case 'start': // Start chatting, on the landing view
      fx.push({ type: 'askNotify' }, { type: 'focus', target: 'status' });
      return lookFor({ ...s, view: 'chat', messages: [], unread: 0, notice: null }, fx);
    case 'newStranger':
      return s.view === 'chat' && !queued(s) ? again(s, fx) : s;
    case 'skip':
      return skip(s, fx);
    case 'esc':
      if (s.view !== 'chat') return s;
      if (s.phase === 'chatting') {
        if (s.escAt !== null && now - s.escAt <= ESC_CONFIRM_MS) return skip(s, fx);
        fx.push({ type: 'timer', name: 'esc', ms: ESC_CONFIRM_MS });
        return { ...s, escAt: now };
      }
      return skip(s, fx);
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
        wantFind: false, messages: [], common: [], unread: 0, notice: null,
      };
    }

    case 'input': { // the Message box changed
      if (s.phase !== 'chatting') return s;
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
    case 'send': { // Enter or the Send button; `allowed` is false when the local allowance is spent
      if (s.phase !== 'chatting') return s;
      const check = checkText(a.text);
      if (check === 'empty') return s;
      if (check === 'too_long') return notice(s, 'too_long', now, fx);
      if (a.allowed === false) return notice(s, 'rate_limited', now, fx);
      send(fx, { type: 'msg', text: a.text });
      if (s.typing) send(fx, { type: 'typing', active: false });
      fx.push({ type: 'clearDraft' });
      return line({ ...s, typing: false }, 'me', a.text);
    }
    case 'noticeExpire':
      return s.notice && now >= s.notice.until ? { ...s, notice: null } : s;
    case 'retryControl': // a control command was refused as rate_limited: say it again
      if (!s.connected || !s.pending) return s;
      if (s.pending === 'find') send(fx, findFrame(s));
      else send(fx, { type: s.pending });
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
      const next = { ...s, connected: true, pending: null, online: f.online ?? s.online };
      return next.wantFind && next.view === 'chat' ? lookFor(next, fx) : { ...next, wantFind: false };
    }
    case 'waiting':
      return s.pending === 'find' || s.pending === 'skip' ? { ...s, pending: null } : s;
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
      return { ...quiet(s), phase: 'chatting', endReason: null, pending: null, common: f.common, messages: [] };
    }
    case 'msg':
      if (s.phase !== 'chatting') return s; // raced a skip: belongs to a room we left
      return line({ ...s, partnerTyping: false, unread: s.hidden ? s.unread + 1 : 0 }, 'stranger', f.text);
    case 'typing':
      return s.phase === 'chatting' ? { ...s, partnerTyping: f.active } : s;
    case 'left':
      if (s.phase !== 'chatting') return s; // the room we skipped out of
      fx.push({ type: 'focus', target: 'ended' });
      return line({ ...quiet(s), phase: 'ended', endReason: 'disconnected' }, 'system', TEXT.disconnected);
    case 'error':
      switch (f.code) {
        case 'rate_limited':
          if (s.pending) fx.push({ type: 'timer', name: 'retryControl', ms: RETRY_CONTROL_MS });
          return notice(s, 'rate_limited', now, fx);
        case 'too_long': {
          const i = s.messages.findLastIndex((m) => m.kind === 'me');
          const messages = i < 0 ? s.messages : s.messages.with(i, { ...s.messages[i], failed: true });
          return notice({ ...s, messages }, 'too_long', now, fx);
        }
        case 'bad_state':
          // Quietly. A refused skip means the partner had already left and we are idle: queue up.
          if (s.pending === 'skip' && s.view === 'chat') {
            send(fx, findFrame(s));
            return { ...s, pending: 'find' };
          }
          return s.pending === 'stop' ? { ...s, pending: null } : s;
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
  const next = { ...quiet(s), connected: false, pending: null };
  if (!(s.view === 'chat' && (s.wantFind || queued(s)))) return next;
  // Looking again by itself only after a restart, or when the user was already asking.
  const wantFind = shown === 'restarting' || (kind === 'lost' && s.wantFind);
  let out = { ...next, phase: 'error', error: shown, endReason: null, wantFind };
  if (s.phase === 'chatting' || s.phase === 'ended') {
    fx.push({ type: 'focus', target: 'ended' });
    out = line(out, 'system', TEXT[shown]);
  }
  return out;
}
