// Reference server of ../../../shared/PROTOCOL.md (wire protocol v1) in Node.js with `ws`.
//
// It exists so that the benchmarks can compare stranger-relay with what a careful Node
// engineer would ship: the same rules, the same limits, the same `/api/stats`, the same
// environment variables. One process, one event loop, everything in memory.
//
// Layout of this file:
//   configuration      every variable of PROTOCOL.md's table, same defaults, exit 2 on a bad one
//   frames             the server's frames and refusals, built once
//   sessions           one object per socket, token buckets inline
//   matchmaker         queue, interest index, interest waits, rematch cooldowns
//   relay              the path of a `msg`/`typing`, backpressure for slow readers
//   connections        per-address rate and caps, the upgrade, close codes
//   timers             one 200 ms tick (matchmaker timers, blocked senders) and one sweep
//                      over all sockets (heartbeat pings, idle timeout, stalled readers)
//   HTTP               /healthz, /api/stats; shutdown on SIGTERM/SIGINT
//
// Nothing a client sends (message, interest, address) is logged or stored.

import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocketServer } from 'ws';

// ---------------------------------------------------------------------------------------------
// Configuration

const NAME = 'stranger-relay-reference-node';

const positiveInt = (s) => {
  if (!/^\+?\d+$/.test(s)) throw 'must be a whole number greater than 0';
  const v = Number(s);
  if (!Number.isSafeInteger(v) || v <= 0) throw 'must be a whole number greater than 0';
  return v;
};
const nonNegativeInt = (s) => {
  if (!/^\+?\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw 'must be a whole number, 0 or more';
  return Number(s);
};
const number = (s) => {
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) throw 'not a number';
  const v = Number(s);
  if (!Number.isFinite(v)) throw 'not a number';
  return v;
};
const rate = (s) => {
  const v = number(s);
  if (v < 0) throw 'must be a rate of 0 or more';
  return v;
};
const positiveSecs = (s) => {
  const v = number(s);
  if (v <= 0) throw 'must be a number greater than 0';
  return v;
};
const nonNegativeSecs = (s) => {
  const v = number(s);
  if (v < 0) throw 'must be a number of seconds, 0 or more';
  return v;
};
const port = (s) => {
  if (!/^\d+$/.test(s) || Number(s) > 65535) throw 'must be a port number, 0 to 65535';
  return Number(s);
};
const host = (s) => {
  const nameLike = s.split('.').every((label) => /^[A-Za-z0-9-]+$/.test(label));
  if (net.isIP(s) === 0 && !nameLike) throw 'must be an IP address or a host name';
  return s;
};
const headerName = (s) => {
  if (s === '') return null; // empty: unset
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(s)) throw 'not a valid HTTP header name';
  return s.toLowerCase(); // Node gives header names in lower case
};
const anyString = (s) => s;

// [variable, default, parser, meaning]: PROTOCOL.md's configuration table.
const SETTINGS = [
  ['HOST', '0.0.0.0', host, 'address to listen on'],
  ['PORT', '8080', port, 'port to listen on'],
  ['MAX_FRAME_BYTES', '16384', positiveInt, 'largest client frame (bigger: close 1009)'],
  ['MAX_TEXT_CHARS', '2000', positiveInt, 'longest msg text, in Unicode scalar values'],
  ['MSG_RATE', '5', rate, 'per-session msg+typing allowance, per second'],
  ['MSG_BURST', '20', positiveInt, 'burst of the msg+typing allowance'],
  ['CONTROL_RATE', '1', rate, 'per-session find+skip+stop allowance, per second'],
  ['CONTROL_BURST', '5', positiveInt, 'burst of the control allowance'],
  ['CONN_RATE_PER_MIN', '20', rate, 'new WebSocket connections per client address, per minute'],
  ['CONN_BURST', '20', positiveInt, 'burst of the per-address connection allowance'],
  ['MAX_CONNS_PER_IP', '20', nonNegativeInt, 'open connections per client address (0: no limit)'],
  ['MAX_CONNS', '0', nonNegativeInt, 'open connections in all (0: no limit)'],
  ['PING_INTERVAL_SECS', '20', positiveSecs, 'seconds between heartbeat pings'],
  ['IDLE_TIMEOUT_SECS', '60', positiveSecs, 'seconds of silence before a connection is dropped'],
  ['INTEREST_WAIT_SECS', '5', nonNegativeSecs, 'seconds before a session with interests is open to anyone'],
  ['REMATCH_COOLDOWN_SECS', '10', nonNegativeSecs, 'seconds before two sessions that parted may be paired again'],
  ['SHUTDOWN_GRACE_SECS', '10', nonNegativeSecs, 'how long a graceful shutdown waits for sockets to close'],
  ['TRUST_PROXY_HEADER', '', headerName, 'header carrying the client address behind a proxy (unset: none)'],
  ['RUST_LOG', 'info', anyString, 'log filter (only "off"/"error"/"warn" are told apart here)'],
];

function readConfig(env, argv) {
  if (argv.includes('--help') || argv.includes('-h')) {
    const lines = [`${NAME}: reference server of PROTOCOL.md (Node.js + ws)`, '', 'Settings (environment variables):'];
    for (const [name, def, , meaning] of SETTINGS) {
      lines.push(`  ${name.padEnd(22)} ${meaning} [default: ${def === '' ? 'unset' : def}]`);
    }
    process.stdout.write(lines.join('\n') + '\n');
    process.exit(0);
  }
  const config = {};
  for (const [name, def, parse] of SETTINGS) {
    const given = env[name];
    const raw = given === undefined || given.trim() === '' ? def : given.trim();
    try {
      config[name] = parse(raw);
    } catch (problem) {
      process.stderr.write(`${NAME}: invalid value ${JSON.stringify(given)} for ${name}: ${problem}\n`);
      process.exit(2);
    }
  }
  return config;
}

const C = readConfig(process.env, process.argv.slice(2));
const QUIET = /^(off|error|warn)$/i.test(C.RUST_LOG.trim());
const log = (line) => {
  if (!QUIET) process.stdout.write(`${new Date().toISOString()} ${line}\n`);
};

const MAX_FRAME_BYTES = C.MAX_FRAME_BYTES;
const MAX_TEXT_CHARS = C.MAX_TEXT_CHARS;
// Token buckets work in milliseconds (performance.now()).
const MSG_RATE_MS = C.MSG_RATE / 1000;
const MSG_BURST = C.MSG_BURST;
const CONTROL_RATE_MS = C.CONTROL_RATE / 1000;
const CONTROL_BURST = C.CONTROL_BURST;
const CONN_RATE_MS = C.CONN_RATE_PER_MIN / 60000;
const CONN_BURST = C.CONN_BURST;
const MAX_CONNS_PER_IP = C.MAX_CONNS_PER_IP;
const MAX_CONNS = C.MAX_CONNS;
const PING_MS = C.PING_INTERVAL_SECS * 1000;
const IDLE_MS = C.IDLE_TIMEOUT_SECS * 1000;
const INTEREST_WAIT_MS = C.INTEREST_WAIT_SECS * 1000;
const COOLDOWN_MS = C.REMATCH_COOLDOWN_SECS * 1000;
const GRACE_MS = C.SHUTDOWN_GRACE_SECS * 1000;
const TRUST_HEADER = C.TRUST_PROXY_HEADER;

// Fixed by PROTOCOL.md ("Abuse", "Matching", field rules).
const STRIKE_BURST = 20;
const STRIKE_RATE_MS = 1 / 1000;
const MAX_INTERESTS = 10;
const MAX_INTEREST_CHARS = 32;
// Slow readers: never more than 1 MiB waits for one session. A sender whose partner's buffer
// is full is paused (backpressure reaches its own socket); if the partner's buffer stays full
// for QUEUE_FULL_GRACE_MS, the partner is closed with 1008. A socket whose buffer has not been
// empty for BACKLOG_LIMIT_MS is closed the same way, so nothing waits longer than ~30 s.
const OUTBOUND_LIMIT = 1 << 20;
const RELAY_THRESHOLD = Math.max(0, OUTBOUND_LIMIT - (MAX_FRAME_BYTES + 64));
const QUEUE_FULL_GRACE_MS = 5000;
const BACKLOG_LIMIT_MS = 25000;
// A closing socket whose peer does not answer the close frame is destroyed after this.
const CLOSE_LINGER_MS = 2000;
// Matchmaker timers ("paired within a second") and blocked senders are looked at this often.
const TICK_MS = 200;
// Heartbeats, idle timeouts and stalled readers: one pass over all sockets this often.
const SWEEP_MS = Math.max(10, Math.min(1000, PING_MS / 2, IDLE_MS / 4));
const FORGET_ADDRESSES_MS = 60000;

// ---------------------------------------------------------------------------------------------
// Frames

const IDLE = 0;
const WAITING = 1;
const CHATTING = 2;

const WAITING_FRAME = '{"type":"waiting"}';
const IDLE_FRAME = '{"type":"idle"}';
const MATCHED_NONE = '{"type":"matched","common":[]}';
const LEFT_SKIPPED = '{"type":"left","reason":"skipped"}';
const LEFT_DISCONNECTED = '{"type":"left","reason":"disconnected"}';
const TYPING_ON = '{"type":"typing","active":true}';
const TYPING_OFF = '{"type":"typing","active":false}';
const MSG_PREFIX = '{"type":"msg","text":';

/** A refused frame: its `error` frame, built once, and whether it costs a strike. */
class Refusal {
  constructor(code, message) {
    this.frame = JSON.stringify({ type: 'error', code, message });
    this.strike = code === 'bad_request' || code === 'rate_limited';
  }
}
const R_MALFORMED = new Refusal('bad_request', 'the frame must be a JSON object with a string field "type"');
const R_SURROGATE = new Refusal('bad_request', 'the frame contains a lone surrogate escape');
const R_UNKNOWN = new Refusal('bad_request', 'unknown frame type');
const R_TEXT_MISSING = new Refusal('bad_request', 'msg needs a string field "text"');
const R_TEXT_TYPE = new Refusal('bad_request', '"text" must be a string');
const R_ACTIVE_MISSING = new Refusal('bad_request', 'typing needs a boolean field "active"');
const R_ACTIVE_TYPE = new Refusal('bad_request', '"active" must be true or false');
const R_INTERESTS_TYPE = new Refusal('bad_request', '"interests" must be an array of strings');
const R_INTERESTS_MANY = new Refusal('bad_request', 'at most 10 interests');
const R_INTEREST_LENGTH = new Refusal('bad_request', 'each interest must be 1 to 32 characters');
const R_TOO_LONG = new Refusal('too_long', 'the message is too long');
const R_EMPTY = new Refusal('too_long', 'the message is empty');
const R_RATE = new Refusal('rate_limited', 'slow down: over the rate limit');
const R_NOT_CHATTING = new Refusal('bad_state', 'msg and typing are only allowed while chatting');
const R_FIND_STATE = new Refusal('bad_state', 'find is only allowed when idle');
const R_LEAVE_STATE = new Refusal('bad_state', 'skip and stop are only allowed when waiting or chatting');

// Unicode White_Space, as Rust's char::is_whitespace.
const NOT_WHITE_SPACE = /[^\p{White_Space}]/u;
const WHITE_SPACE_RUN = /\p{White_Space}+/gu;
const NO_INTERESTS = Object.freeze([]);

/** Unicode scalar values in a well-formed string (a surrogate pair counts once). */
function scalarCount(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xdc00 && c <= 0xdfff) n--;
  }
  return n;
}

/** `too_long` refusal for a `msg` text, or null when it is acceptable. */
function checkText(text) {
  // UTF-16 length >= scalar values >= half of it: count only when it matters.
  if (text.length > MAX_TEXT_CHARS && (text.length > 2 * MAX_TEXT_CHARS || scalarCount(text) > MAX_TEXT_CHARS)) {
    return R_TOO_LONG;
  }
  if (!NOT_WHITE_SPACE.test(text)) return R_EMPTY;
  return null;
}

/**
 * `interests` of a `find`: at most 10 strings as sent; each trimmed, inner white space
 * collapsed to one space, lower-cased, then 1 to 32 scalar values; duplicates dropped (the
 * first kept). Returns the array, or a Refusal.
 */
function normalizeInterests(raw) {
  if (raw === undefined || raw === null) return NO_INTERESTS;
  if (!Array.isArray(raw)) return R_INTERESTS_TYPE;
  for (let i = 0; i < raw.length; i++) if (typeof raw[i] !== 'string') return R_INTERESTS_TYPE;
  if (raw.length > MAX_INTERESTS) return R_INTERESTS_MANY;
  if (raw.length === 0) return NO_INTERESTS;
  const out = [];
  for (let i = 0; i < raw.length; i++) {
    let s = raw[i].replace(WHITE_SPACE_RUN, ' ');
    if (s.charCodeAt(0) === 32) s = s.slice(1);
    if (s.charCodeAt(s.length - 1) === 32) s = s.slice(0, -1);
    s = s.toLowerCase();
    const chars = scalarCount(s);
    if (chars === 0 || chars > MAX_INTEREST_CHARS) return R_INTEREST_LENGTH;
    if (!out.includes(s)) out.push(s);
  }
  return out;
}

/**
 * True when a JSON text holds a \uD800-\uDFFF escape that is not half of a proper pair
 * (JSON.parse accepts them; the protocol counts them as invalid JSON). The text has already
 * parsed, so every backslash is an escape inside a string.
 */
function hasLoneSurrogateEscape(json) {
  let i = json.indexOf('\\');
  while (i !== -1) {
    if (json.charCodeAt(i + 1) !== 0x75 /* u */) {
      i = json.indexOf('\\', i + 2);
      continue;
    }
    const unit = parseInt(json.slice(i + 2, i + 6), 16);
    i += 6;
    if (unit >= 0xd800 && unit <= 0xdbff) {
      if (json.charCodeAt(i) !== 0x5c || json.charCodeAt(i + 1) !== 0x75) return true;
      const low = parseInt(json.slice(i + 2, i + 6), 16);
      if (!(low >= 0xdc00 && low <= 0xdfff)) return true;
      i += 6;
    } else if (unit >= 0xdc00 && unit <= 0xdfff) {
      return true;
    }
    i = json.indexOf('\\', i);
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Sessions

const SESSION = Symbol('session');

/** One open WebSocket: its protocol state, allowances and heartbeat. Fields fixed up front. */
class Session {
  constructor(ws, addr, now) {
    this.ws = ws;
    this.addr = addr;
    this.state = IDLE;
    this.partner = null;
    this.interests = NO_INTERESTS;
    // Queue position (smaller: waiting longer), open to anyone, when the interest wait ends.
    this.seq = 0;
    this.open = false;
    this.openAt = 0;
    // Map<Session, until> of rematch cooldowns, created on the first one.
    this.cool = null;
    // Token buckets: tokens and time of the last refill.
    this.chatTokens = MSG_BURST;
    this.chatAt = now;
    this.controlTokens = CONTROL_BURST;
    this.controlAt = now;
    this.strikeTokens = STRIKE_BURST;
    this.strikeAt = now;
    // Heartbeat.
    this.lastSeen = now;
    this.nextPing = now + PING_MS;
    // Backpressure: a relayed frame held while the partner's buffer is full, the partner it
    // was for, and frames read meanwhile (processed in order once the frame is out).
    this.held = null;
    this.heldFor = null;
    this.backlog = null;
    // As a receiver: since when senders wait on this session's full buffer / since when its
    // buffer has not been empty.
    this.fullSince = 0;
    this.outSince = 0;
    this.closed = false;
  }

  takeChat(now) {
    let t = this.chatTokens + (now - this.chatAt) * MSG_RATE_MS;
    if (t > MSG_BURST) t = MSG_BURST;
    this.chatAt = now;
    if (t < 1) {
      this.chatTokens = t;
      return false;
    }
    this.chatTokens = t - 1;
    return true;
  }

  takeControl(now) {
    let t = this.controlTokens + (now - this.controlAt) * CONTROL_RATE_MS;
    if (t > CONTROL_BURST) t = CONTROL_BURST;
    this.controlAt = now;
    if (t < 1) {
      this.controlTokens = t;
      return false;
    }
    this.controlTokens = t - 1;
    return true;
  }

  takeStrike(now) {
    let t = this.strikeTokens + (now - this.strikeAt) * STRIKE_RATE_MS;
    if (t > STRIKE_BURST) t = STRIKE_BURST;
    this.strikeAt = now;
    if (t < 1) {
      this.strikeTokens = t;
      return false;
    }
    this.strikeTokens = t - 1;
    return true;
  }
}

/** Every open session, for /api/stats, the sweep and the shutdown. */
const sessions = new Set();
/** `fullSince` of a session closed for not reading. */
const STALLED = -1;
/** Sessions paused because their partner's buffer is full. */
const blocked = new Set();
let shuttingDown = false;

function send(s, frame) {
  s.ws.send(frame);
}

/** Refuses a frame: `error`, and a strike for bad_request/rate_limited (out of them: 1008). */
function refuse(s, refusal, now) {
  if (refusal.strike && !s.takeStrike(now)) {
    abort(s, 1008, 'too many refused frames');
    return;
  }
  send(s, refusal.frame);
}

/** Ends the session (the partner hears `left disconnected`) and closes its socket. */
function abort(s, code, reason) {
  endSession(s, true);
  s.ws.close(code, reason);
}

/**
 * The session is over (its socket closed or is being closed): out of the queue or its room at
 * once, its place under the connection limits given back.
 */
function endSession(s, tellPartner) {
  if (s.closed) return;
  s.closed = true;
  sessions.delete(s);
  if (s.held !== null) {
    // It was paused waiting on its partner: nobody waits on that partner any more, and the
    // socket must read again for its close handshake.
    blocked.delete(s);
    if (s.heldFor.fullSince > 0) s.heldFor.fullSince = 0;
    s.held = null;
    s.heldFor = null;
    s.backlog = null;
    s.ws.resume();
  }
  releaseAddress(s.addr);
  if (s.state === WAITING) {
    unqueue(s);
  } else if (s.state === CHATTING) {
    const p = s.partner;
    endRoom(s, p);
    if (tellPartner) send(p, LEFT_DISCONNECTED);
  }
  s.state = IDLE;
}

// ---------------------------------------------------------------------------------------------
// Matchmaker
//
// Waiting sessions are indexed by interest (a Set per interest, in queue order) and, when open
// to anyone, in `openSet` (queue order too). A session without interests is open at once: for
// that case a find is O(1) — the first session of `openSet` not in a cooldown with it.
// Sessions with interests wait in `pendingOpen` (in order of their opening time, which is queue
// order) until their interest wait ends; rematch cooldowns end in order too (`cooldowns`).

let waitingCount = 0;
let roomCount = 0;
let nextSeq = 1;
let openSet = new Set();
let openMaxSeq = 0;
const byInterest = new Map();
const pendingOpen = new Set();

/** A FIFO without shifting arrays. */
class Fifo {
  constructor() {
    this.items = [];
    this.head = 0;
  }
  get size() {
    return this.items.length - this.head;
  }
  push(x) {
    this.items.push(x);
  }
  peek() {
    return this.items[this.head];
  }
  shift() {
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }
}
/** Entries { a, b, until } in order of `until`. */
const cooldowns = new Fifo();

function openAdd(s) {
  if (s.seq > openMaxSeq) {
    openSet.add(s);
    openMaxSeq = s.seq;
    return;
  }
  // A session with interests whose wait just ended is older than some open ones: keep queue
  // order. Rare, and `openSet` is small then (open sessions pair at once unless cooling).
  const all = Array.from(openSet);
  all.push(s);
  all.sort((x, y) => x.seq - y.seq);
  openSet = new Set(all);
}

function openDelete(s) {
  openSet.delete(s);
  if (openSet.size === 0) openMaxSeq = 0;
}

function enqueue(s, now) {
  s.seq = nextSeq++;
  s.state = WAITING;
  waitingCount++;
  const interests = s.interests;
  if (interests.length === 0) {
    s.open = true;
    openAdd(s);
    return;
  }
  s.open = false;
  for (let i = 0; i < interests.length; i++) {
    let set = byInterest.get(interests[i]);
    if (set === undefined) {
      set = new Set();
      byInterest.set(interests[i], set);
    }
    set.add(s);
  }
  s.openAt = now + INTEREST_WAIT_MS;
  pendingOpen.add(s);
}

function unqueue(s) {
  waitingCount--;
  if (s.open) openDelete(s);
  else pendingOpen.delete(s);
  const interests = s.interests;
  for (let i = 0; i < interests.length; i++) {
    const set = byInterest.get(interests[i]);
    set.delete(s);
    if (set.size === 0) byInterest.delete(interests[i]);
  }
}

function cooling(a, b, now) {
  const m = a.cool;
  if (m === null) return false;
  const until = m.get(b);
  return until !== undefined && until > now;
}

/** Pairs the waiting session `s` with its best partner, if there is one. */
function tryPair(s, now) {
  let best = null;
  const interests = s.interests;
  for (let i = 0; i < interests.length; i++) {
    for (const c of byInterest.get(interests[i])) {
      if (best !== null && c.seq >= best.seq) break;
      if (c !== s && !cooling(s, c, now)) {
        best = c;
        break;
      }
    }
  }
  if (best === null && s.open) {
    for (const c of openSet) {
      if (c !== s && !cooling(s, c, now)) {
        best = c;
        break;
      }
    }
  }
  if (best !== null) makeRoom(s, best);
}

function makeRoom(a, b) {
  unqueue(a);
  unqueue(b);
  a.state = CHATTING;
  b.state = CHATTING;
  a.partner = b;
  b.partner = a;
  roomCount++;
  let frame = MATCHED_NONE;
  if (a.interests.length !== 0 && b.interests.length !== 0) {
    const common = a.interests.filter((x) => b.interests.includes(x));
    if (common.length !== 0) frame = JSON.stringify({ type: 'matched', common });
  }
  send(a, frame);
  send(b, frame);
}

function endRoom(s, p) {
  s.partner = null;
  p.partner = null;
  s.state = IDLE;
  p.state = IDLE;
  roomCount--;
}

function startCooldown(a, b, now) {
  if (COOLDOWN_MS <= 0) return;
  const until = now + COOLDOWN_MS;
  (a.cool ??= new Map()).set(b, until);
  (b.cool ??= new Map()).set(a, until);
  cooldowns.push({ a, b, until });
}

/** skip/stop: leaves the queue, or the room (the partner hears `left skipped`). */
function leave(s, now) {
  if (s.state === WAITING) {
    unqueue(s);
    s.state = IDLE;
    return;
  }
  const p = s.partner;
  endRoom(s, p);
  startCooldown(s, p, now);
  send(p, LEFT_SKIPPED);
}

function find(s, interests, now) {
  s.interests = interests;
  enqueue(s, now);
  send(s, WAITING_FRAME);
  tryPair(s, now);
}

function skip(s, now) {
  leave(s, now);
  enqueue(s, now);
  send(s, WAITING_FRAME);
  tryPair(s, now);
}

function stop(s, now) {
  leave(s, now);
  send(s, IDLE_FRAME);
}

const bySeq = (x, y) => x.seq - y.seq;

/** Interest waits and cooldowns that ended: pair who became compatible, longest waiting first. */
function matchmakerTick(now) {
  let candidates = null;
  for (const s of pendingOpen) {
    if (s.openAt > now) break;
    pendingOpen.delete(s);
    s.open = true;
    openAdd(s);
    (candidates ??= []).push(s);
  }
  while (cooldowns.size !== 0 && cooldowns.peek().until <= now) {
    const { a, b, until } = cooldowns.shift();
    for (const [x, y] of [[a, b], [b, a]]) {
      if (x.cool !== null && x.cool.get(y) === until) {
        x.cool.delete(y);
        if (x.cool.size === 0) x.cool = null;
      }
      if (x.state === WAITING) (candidates ??= []).push(x);
    }
  }
  if (candidates === null) return;
  candidates.sort(bySeq);
  for (let i = 0; i < candidates.length; i++) {
    const c = candidates[i];
    if (c.state === WAITING && (i === 0 || candidates[i - 1] !== c)) tryPair(c, now);
  }
}

// ---------------------------------------------------------------------------------------------
// Client frames and the relay

function onMessage(data, isBinary) {
  const s = this[SESSION];
  if (s.closed) return;
  const now = performance.now();
  s.lastSeen = now;
  if (isBinary) {
    abort(s, 1003, 'binary frames are not accepted');
    return;
  }
  if (s.held !== null) {
    (s.backlog ??= []).push(data);
    return;
  }
  handleText(s, data, now);
}

/** One text frame, checked in PROTOCOL.md's order: allowance, then state, then fields. */
function handleText(s, data, now) {
  const text = data.toString();
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    refuse(s, R_MALFORMED, now);
    return;
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m) || typeof m.type !== 'string') {
    refuse(s, R_MALFORMED, now);
    return;
  }
  if (text.includes('\\u') && hasLoneSurrogateEscape(text)) {
    refuse(s, R_SURROGATE, now);
    return;
  }
  switch (m.type) {
    case 'msg': {
      if (!s.takeChat(now)) return refuse(s, R_RATE, now);
      if (s.state !== CHATTING) return refuse(s, R_NOT_CHATTING, now);
      const t = m.text;
      if (typeof t !== 'string') return refuse(s, t === undefined ? R_TEXT_MISSING : R_TEXT_TYPE, now);
      const bad = checkText(t);
      if (bad !== null) return refuse(s, bad, now);
      relay(s, MSG_PREFIX + JSON.stringify(t) + '}', now);
      return;
    }
    case 'typing': {
      if (!s.takeChat(now)) return refuse(s, R_RATE, now);
      if (s.state !== CHATTING) return refuse(s, R_NOT_CHATTING, now);
      const a = m.active;
      if (typeof a !== 'boolean') return refuse(s, a === undefined ? R_ACTIVE_MISSING : R_ACTIVE_TYPE, now);
      relay(s, a ? TYPING_ON : TYPING_OFF, now);
      return;
    }
    case 'find': {
      if (!s.takeControl(now)) return refuse(s, R_RATE, now);
      if (s.state !== IDLE) return refuse(s, R_FIND_STATE, now);
      const interests = normalizeInterests(m.interests);
      if (interests instanceof Refusal) return refuse(s, interests, now);
      find(s, interests, now);
      return;
    }
    case 'skip':
    case 'stop':
      if (!s.takeControl(now)) return refuse(s, R_RATE, now);
      if (s.state === IDLE) return refuse(s, R_LEAVE_STATE, now);
      if (m.type === 'skip') skip(s, now);
      else stop(s, now);
      return;
    default:
      refuse(s, R_UNKNOWN, now);
  }
}

/** Sends a chat frame to the partner, or holds it (and pauses the sender) while the
 * partner's buffer is full. */
function relay(s, frame, now) {
  const p = s.partner;
  if (p.ws.bufferedAmount <= RELAY_THRESHOLD) {
    send(p, frame);
    return;
  }
  s.held = frame;
  s.heldFor = p;
  if (p.fullSince === 0) p.fullSince = now;
  blocked.add(s);
  s.ws.pause();
}

/** Looks at the paused senders: deliver, give up (room gone), or close the stalled partner. */
function checkBlocked(now) {
  for (const s of blocked) {
    const p = s.heldFor;
    if (s.partner !== p) {
      // The room ended meanwhile: the held frame reached nobody (`bad_state`, as for any msg
      // that meets no room). When the partner was closed for not reading, `left` says enough.
      if (p.fullSince !== STALLED) {
        p.fullSince = 0;
        send(s, R_NOT_CHATTING.frame);
      }
      release(s);
    } else if (p.ws.bufferedAmount <= RELAY_THRESHOLD) {
      p.fullSince = 0;
      send(p, s.held);
      release(s);
    } else if (now - p.fullSince >= QUEUE_FULL_GRACE_MS) {
      stalled(p);
      release(s);
    }
  }
}

/** Unpauses a sender and processes, in order, what it sent meanwhile. */
function release(s) {
  blocked.delete(s);
  s.held = null;
  s.heldFor = null;
  while (s.backlog !== null && s.held === null && !s.closed) {
    const data = s.backlog.shift();
    if (s.backlog.length === 0) s.backlog = null;
    handleText(s, data, performance.now());
  }
  if (!s.closed && s.held === null) s.ws.resume();
}

/** A session that stopped reading: closed with 1008 (dropped if the close cannot get out). */
function stalled(s) {
  s.fullSince = STALLED;
  endSession(s, true);
  s.ws.close(1008, 'not reading');
}

// ---------------------------------------------------------------------------------------------
// Connections

const addrOpen = new Map(); // address -> open connections
const addrRate = new Map(); // address -> { tokens, at }
let openConns = 0;

/** Admits a WebSocket from `addr`, or names the limit that refuses it (caps before the rate,
 * so a refused attempt does not use up the address's rate). */
function admit(addr, now) {
  if (MAX_CONNS !== 0 && openConns >= MAX_CONNS) return 'the server is full';
  const open = addrOpen.get(addr) ?? 0;
  if (MAX_CONNS_PER_IP !== 0 && open >= MAX_CONNS_PER_IP) return 'too many connections from your address';
  let bucket = addrRate.get(addr);
  if (bucket === undefined) {
    bucket = { tokens: CONN_BURST, at: now };
    addrRate.set(addr, bucket);
  } else {
    bucket.tokens = Math.min(CONN_BURST, bucket.tokens + (now - bucket.at) * CONN_RATE_MS);
    bucket.at = now;
  }
  if (bucket.tokens < 1) return 'too many new connections from your address';
  bucket.tokens -= 1;
  addrOpen.set(addr, open + 1);
  openConns++;
  return null;
}

function releaseAddress(addr) {
  openConns--;
  const open = addrOpen.get(addr) - 1;
  if (open === 0) addrOpen.delete(addr);
  else addrOpen.set(addr, open);
}

/** Forgets the rate state of addresses whose allowance is full again. */
function forgetAddresses() {
  const now = performance.now();
  for (const [addr, bucket] of addrRate) {
    if (bucket.tokens + (now - bucket.at) * CONN_RATE_MS >= CONN_BURST) addrRate.delete(addr);
  }
}

function canonicalAddress(a) {
  if (a === undefined) return '';
  // IPv4-mapped IPv6 is the IPv4 address.
  if (a.startsWith('::ffff:') && a.includes('.')) return a.slice(7);
  return a;
}

/** The address in the trusted header: exactly one IPv4 or IPv6 address, no port, no list. */
function headerAddress(value) {
  if (typeof value !== 'string') return null; // absent (Node joins repeated ones with ", ")
  const v = value.trim();
  const family = net.isIP(v);
  if (family === 4) return v;
  if (family === 6 && !v.includes('%')) {
    // One spelling per address: 2001:DB8::1 and 2001:db8:0::1 count together.
    return canonicalAddress(new URL(`http://[${v}]/`).hostname.slice(1, -1));
  }
  return null;
}

const wss = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_FRAME_BYTES,
  perMessageDeflate: false,
  clientTracking: false,
  closeTimeout: CLOSE_LINGER_MS,
});

function onClose() {
  endSession(this[SESSION], !shuttingDown);
}

/** ws closes the socket itself on a protocol error (1009 too big, 1007 bad UTF-8, 1002): the
 * session ends now, not when the close handshake is over. */
function onError() {
  const s = this[SESSION];
  if (s !== undefined) endSession(s, !shuttingDown);
}

function onPong() {
  this[SESSION].lastSeen = performance.now();
}

function onUpgrade(req, socket, head) {
  const url = req.url;
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (path !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  let addr;
  if (TRUST_HEADER !== null) {
    addr = headerAddress(req.headers[TRUST_HEADER]);
    if (addr === null) {
      const body = 'missing or invalid client address header';
      socket.end(
        `HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      return;
    }
  } else {
    addr = canonicalAddress(socket.remoteAddress);
  }
  wss.handleUpgrade(req, socket, head, (ws) => accept(ws, addr));
}

/** The upgrade is done: a session, or a refusal that the page can explain (1013/1012). */
function accept(ws, addr) {
  ws.on('error', onError);
  if (shuttingDown) {
    ws.close(1012, 'the server is restarting');
    return;
  }
  const now = performance.now();
  const refusal = admit(addr, now);
  if (refusal !== null) {
    ws.close(1013, refusal);
    return;
  }
  const s = new Session(ws, addr, now);
  ws[SESSION] = s;
  ws.on('message', onMessage);
  ws.on('pong', onPong);
  ws.on('ping', onPong);
  ws.on('close', onClose);
  sessions.add(s);
  send(s, '{"type":"hello","version":1,"online":' + sessions.size + '}');
}

// ---------------------------------------------------------------------------------------------
// Timers

function tick() {
  const now = performance.now();
  if (pendingOpen.size !== 0 || cooldowns.size !== 0) matchmakerTick(now);
  if (blocked.size !== 0) checkBlocked(now);
}

/** Heartbeat pings, idle timeout, readers whose buffer never empties. */
function sweep() {
  const now = performance.now();
  for (const s of sessions) {
    if (now - s.lastSeen >= IDLE_MS) {
      abort(s, 1001, 'idle timeout');
      continue;
    }
    const ws = s.ws;
    if (ws.bufferedAmount === 0) {
      s.outSince = 0;
    } else if (s.outSince === 0) {
      s.outSince = now;
    } else if (now - s.outSince >= BACKLOG_LIMIT_MS) {
      stalled(s);
      continue;
    }
    if (now >= s.nextPing) {
      s.nextPing = now + PING_MS;
      ws.ping();
    }
  }
}

const timers = [
  setInterval(tick, TICK_MS),
  setInterval(sweep, SWEEP_MS),
  setInterval(forgetAddresses, FORGET_ADDRESSES_MS),
];

// ---------------------------------------------------------------------------------------------
// HTTP

function reply(res, status, type, body, extra) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  if (extra !== undefined) for (const k in extra) res.setHeader(k, extra[k]);
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function onRequest(req, res) {
  const url = req.url;
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (path !== '/healthz' && path !== '/api/stats' && path !== '/ws') {
    reply(res, 404, 'text/plain; charset=utf-8', 'Not Found');
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    reply(res, 405, 'text/plain; charset=utf-8', 'Method Not Allowed', { Allow: 'GET, HEAD' });
    return;
  }
  if (path === '/healthz') {
    reply(res, 200, 'text/plain; charset=utf-8', 'ok');
  } else if (path === '/api/stats') {
    const body = `{"online":${sessions.size},"waiting":${waitingCount},"rooms":${roomCount}}`;
    reply(res, 200, 'application/json', body, { 'Cache-Control': 'no-store' });
  } else {
    reply(res, 426, 'text/plain; charset=utf-8', 'this endpoint takes a WebSocket upgrade', {
      Upgrade: 'websocket',
      'Sec-WebSocket-Version': '13',
    });
  }
}

const server = http.createServer({ headersTimeout: 10000, requestTimeout: 10000 }, onRequest);
server.on('upgrade', onUpgrade);
server.on('error', (err) => {
  process.stderr.write(`${NAME}: cannot listen on ${C.HOST}:${C.PORT}: ${err.message}\n`);
  process.exit(1);
});
server.listen(C.PORT, C.HOST, () => {
  const { address, port: bound } = server.address();
  log(`listening on ${address}:${bound}`);
});

/** SIGTERM/SIGINT: no new connection, every socket gets 1012, exit 0 once they are closed or
 * SHUTDOWN_GRACE_SECS passed. Partners are not told `left`: everyone gets 1012. */
function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`${signal}: shutting down, ${sessions.size} open sessions`);
  for (const t of timers) clearInterval(t);
  const done = () => {
    log('shutdown complete');
    process.exit(0);
  };
  server.close(done); // fires once every connection, upgraded ones included, has closed
  server.closeIdleConnections();
  for (const s of sessions) {
    endSession(s, false);
    s.ws.close(1012, 'the server is restarting');
  }
  setTimeout(done, GRACE_MS);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
