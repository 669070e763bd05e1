// protocol.js — the WebSocket client for PROTOCOL.md (version 1), and its text rules.
// Owns: the /ws address, parsing server frames, sending commands within a local allowance
// (so the page never trips the server's rate limits), reconnecting with backoff, mapping close
// codes, and the interest / message rules shared with the server. No DOM: WebSocket, timers,
// clock and randomness are injected, so Node's test runner can drive it.

import { parseChallenge } from './pow.js';

export const MAX_TEXT_CHARS = 2000;
export const MAX_INTERESTS = 10;
export const MAX_INTEREST_CHARS = 32;

// Unicode White_Space, as Rust's char::is_whitespace (JS's \s differs on U+0085 and U+FEFF).
const WHITE_SPACE = /\p{White_Space}+/u;
const ALL_WHITE_SPACE = /^\p{White_Space}*$/u;

/** ws://host/ws or wss://host/ws for the page's own location. */
export function wsUrl(location) {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
}

/** Lone surrogates would be escaped by JSON.stringify and refused by the server. */
export function wellFormed(text) {
  return typeof text.toWellFormed === 'function'
    ? text.toWellFormed()
    : text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

/** Length in Unicode scalar values, as the server counts. */
export function charCount(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** An interest as the server normalises it: trimmed, lower-cased, inner white space collapsed. */
export function normalizeInterest(raw) {
  return wellFormed(String(raw))
    .split(WHITE_SPACE)
    .filter((word) => word !== '')
    .join(' ')
    // The whole string at once, like the server's str::to_lowercase (final sigma included).
    .toLowerCase();
}

/** 'ok', 'empty' (nothing but white space) or 'too_long' for a message text. */
export function checkText(text, max = MAX_TEXT_CHARS) {
  if (ALL_WHITE_SPACE.test(text)) return 'empty';
  return charCount(text) > max ? 'too_long' : 'ok';
}

/** What a close code means to the user. */
export function closeKind(code) {
  switch (code) {
    case 1012: return 'restarting';
    case 1013: return 'busy';
    case 1008: return 'abuse';
    default: return 'lost';
  }
}

/** Delay before reconnect attempt number `attempt` (0-based): 0.5 s doubling to 15 s, ±25 %. */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(15000, 500 * 2 ** Math.min(attempt, 10));
  return Math.round(base * (0.75 + random() * 0.5));
}

/** A token bucket: `rate` tokens a second, at most `burst`. */
export class TokenBucket {
  constructor(rate, burst, now) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.at = now;
  }
  refill(now) {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
  }
  available(now) {
    this.refill(now);
    return this.tokens >= 1;
  }
  take(now) {
    if (!this.available(now)) return false;
    this.tokens -= 1;
    return true;
  }
  /** Milliseconds until a token is there. */
  wait(now) {
    this.refill(now);
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / this.rate) * 1000);
  }
}

const str = (v) => typeof v === 'string';

/** A server frame as an object, or null when it is not one this page understands. */
export function parseFrame(data) {
  if (!str(data)) return null;
  let f;
  try {
    f = JSON.parse(data);
  } catch {
    return null;
  }
  if (!f || typeof f !== 'object' || Array.isArray(f) || !str(f.type)) return null;
  switch (f.type) {
    case 'hello': {
      // Safety extensions (PROTOCOL.md "Safety"): `features` (names this page does not know are
      // kept and ignored) and `challenge` (only read when `features` has "pow").
      const features = Array.isArray(f.features) ? f.features.filter(str) : [];
      const challenge = features.includes('pow') ? parseChallenge(f.challenge) : null;
      return {
        type: 'hello', version: f.version, online: Number.isFinite(f.online) ? f.online : null,
        features, challenge,
      };
    }
    case 'waiting':
    case 'idle':
    case 'reported':
      return { type: f.type };
    case 'matched':
      return { type: 'matched', common: Array.isArray(f.common) ? f.common.filter(str) : [] };
    case 'msg':
      return str(f.text) ? { type: 'msg', text: f.text } : null;
    case 'typing':
      return { type: 'typing', active: f.active === true };
    case 'left':
      return { type: 'left', reason: f.reason === 'skipped' ? 'skipped' : 'disconnected' };
    case 'error':
      if (!str(f.code)) return null;
      return {
        type: 'error', code: f.code, message: str(f.message) ? f.message : '',
        // With `banned` only: whole seconds left, at least 1.
        retryAfter: Number.isFinite(f.retry_after) && f.retry_after >= 1 ? Math.ceil(f.retry_after) : null,
      };
    default:
      return null; // extensions may add types; this page ignores them
  }
}

// `report` joins the control allowance (PROTOCOL.md, "Safety").
const CONTROL = new Set(['find', 'skip', 'stop', 'report']);

/**
 * The connection. `onEvent` gets {type:'frame', frame} for each server frame and
 * {type:'closed', code, kind} once per socket that ends without us asking.
 * The local allowance sits a little under the server's (5/s burst 20 for msg+typing,
 * 1/s burst 5 for find/skip/stop/report): frames beyond it wait in order instead of being refused.
 */
export function createClient({
  url,
  onEvent,
  WebSocket: WS = globalThis.WebSocket,
  now = () => Date.now(),
  setTimeout: later = globalThis.setTimeout.bind(globalThis),
  clearTimeout: cancel = globalThis.clearTimeout.bind(globalThis),
  random = Math.random,
  chatRate = 4.5,
  chatBurst = 18,
  controlRate = 0.9,
  controlBurst = 4,
  openTimeoutMs = 10000,
}) {
  let ws = null;
  let attempt = 0; // failed attempts since the last hello
  let retryTimer = null;
  let openTimer = null;
  let pumpTimer = null;
  let queue = [];
  const chat = new TokenBucket(chatRate, chatBurst, now());
  const control = new TokenBucket(controlRate, controlBurst, now());
  const bucket = (type) => (CONTROL.has(type) ? control : chat);
  const isOpen = () => ws !== null && ws.readyState === 1;

  function clearTimers() {
    cancel(openTimer);
    cancel(pumpTimer);
    openTimer = pumpTimer = null;
    queue = [];
  }

  function ended(sock, code) {
    if (sock !== ws) return; // a socket we already let go of
    ws = null;
    clearTimers();
    onEvent({ type: 'closed', code, kind: closeKind(code) });
  }

  function open() {
    cancel(retryTimer);
    retryTimer = null;
    let sock;
    try {
      sock = new WS(url);
    } catch {
      ws = { readyState: 3 };
      ended(ws, 1006);
      return;
    }
    ws = sock;
    openTimer = later(() => {
      if (sock === ws && sock.readyState !== 1) {
        ended(sock, 1006);
        try { sock.close(); } catch { /* already gone */ }
      }
    }, openTimeoutMs);
    sock.onopen = () => {
      if (sock === ws) cancel(openTimer);
    };
    sock.onmessage = (ev) => {
      if (sock !== ws) return;
      const frame = parseFrame(ev.data);
      if (!frame) return;
      if (frame.type === 'hello') attempt = 0;
      onEvent({ type: 'frame', frame });
    };
    sock.onclose = (ev) => ended(sock, ev.code || 1006);
    sock.onerror = () => {}; // a close event always follows
  }

  function pump() {
    cancel(pumpTimer);
    pumpTimer = null;
    while (queue.length && isOpen()) {
      const b = bucket(queue[0].type);
      const t = now();
      if (!b.take(t)) {
        pumpTimer = later(pump, Math.max(1, b.wait(t)));
        return;
      }
      ws.send(JSON.stringify(queue.shift()));
    }
  }

  return {
    get connected() {
      return isOpen();
    },
    /** Open a socket now, unless one is open or opening. */
    connect() {
      if (ws === null) open();
    },
    /** Open a socket after the backoff delay (unless one is open, opening or scheduled). */
    reconnectLater() {
      if (ws !== null || retryTimer !== null) return;
      retryTimer = later(open, backoffDelay(attempt++, random));
    },
    cancelRetry() {
      cancel(retryTimer);
      retryTimer = null;
    },
    /** Give up the socket and report it lost (the browser went offline). */
    drop() {
      const sock = ws;
      if (sock === null) return;
      ended(sock, 1006);
      try { sock.close(); } catch { /* already gone */ }
    },
    /** Close without reporting (page going away). */
    close() {
      const sock = ws;
      ws = null;
      clearTimers();
      this.cancelRetry();
      if (sock) try { sock.close(1000); } catch { /* already gone */ }
    },
    /** True when a `msg` would go out now rather than wait for the allowance. */
    canSendMessage() {
      return isOpen() && !queue.some((f) => !CONTROL.has(f.type)) && chat.available(now());
    },
    /** Queue a client frame; false when there is no open socket (or a stale typing:true). */
    send(frame) {
      if (!isOpen()) return false;
      if (frame.type === 'typing' && frame.active && (queue.length || !chat.available(now()))) {
        return false; // "started typing" is worthless once late
      }
      const out = { ...frame };
      if (str(out.text)) out.text = wellFormed(out.text);
      queue.push(out);
      pump();
      return true;
    },
  };
}
