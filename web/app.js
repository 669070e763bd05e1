// app.js — the DOM side: wires the page's elements to the state machine (state.js) and the
// connection (protocol.js). Owns: event listeners, rendering state into the DOM, timers the
// reducer asks for, focus, scrolling, the online count poll, the title, sound and notifications,
// the 18+ tick in localStorage, the Report dialog, the contact-detail warning, and the proof-of-work
// Web Worker (pow-worker.js; solved on this thread, in small slices, if a worker cannot start).
// Messages are rendered with textContent only, never as HTML.

import { createClient, wsUrl, charCount, MAX_TEXT_CHARS } from './protocol.js';
import {
  initialState, reduce, takeInterests, statusText, hintText, noticeText, titleText, onlineText,
  counterText, showNewStranger, canSkip, canStart, canReport, hasFeature, TEXT,
} from './state.js';
import { solve, subtleHasher, syncHasher } from './pow.js';
import { sha256 } from './sha256.js';

const STATS_EVERY_MS = 5000;
const $ = (id) => document.getElementById(id);
const el = {
  landing: $('landing'), chat: $('chat'), online: $('online'), tags: $('tags'),
  interests: $('interests'), interestsHelp: $('interests-help'), start: $('start'),
  stop: $('stop'), status: $('status'), log: $('messages'), jump: $('jump'), hint: $('hint'),
  notice: $('notice'), typing: $('typing'), counter: $('counter'), newStranger: $('new'),
  skip: $('skip'), message: $('message'), send: $('send'),
  adult: $('adult'), tipReport: $('tip-report'), report: $('report'),
  reportDialog: $('report-dialog'), reportForm: $('report-form'), reportCancel: $('report-cancel'),
  contactWarning: $('contact-warning'), contactText: $('contact-text'),
  contactEdit: $('contact-edit'), contactSend: $('contact-send'),
};
const HELP = el.interestsHelp.textContent;

// The 18+ tick: the one thing this notice keeps, under one key, and only once ticked.
const ADULT_KEY = 'adult-ok';
function storedAdult() {
  try {
    return localStorage.getItem(ADULT_KEY) === '1';
  } catch {
    return false; // storage off: ask again on each load
  }
}
function rememberAdult(value) {
  try {
    if (value) localStorage.setItem(ADULT_KEY, '1');
    else localStorage.removeItem(ADULT_KEY);
  } catch { /* storage off */ }
}

let state = { ...initialState({ adult: storedAdult() }), hidden: isHidden() };
const timers = new Map();
const client = createClient({
  url: wsUrl(location),
  onEvent(ev) {
    if (ev.type === 'frame') dispatch({ type: 'server', frame: ev.frame });
    else if (ev.type === 'closed') dispatch({ type: 'closed', kind: ev.kind });
  },
});

function isHidden() {
  return document.hidden || document.visibilityState === 'hidden';
}

function dispatch(action) {
  const { state: next, effects } = reduce(state, { now: Date.now(), ...action });
  state = next;
  render();
  for (const fx of effects) run(fx);
}

// ---- effects ---------------------------------------------------------------------------------

const TIMER_ACTIONS = {
  esc: 'escExpire', typing: 'typingExpire', notice: 'noticeExpire', retryControl: 'retryControl',
  reportGrace: 'reportGraceExpire',
};

function run(fx) {
  switch (fx.type) {
    case 'send': client.send(fx.frame); break;
    case 'connect': client.connect(); break;
    case 'reconnect': client.reconnectLater(); break;
    case 'timer':
      clearTimeout(timers.get(fx.name));
      timers.set(fx.name, setTimeout(() => dispatch({ type: TIMER_ACTIONS[fx.name] }), fx.ms));
      break;
    case 'focus': focus(fx.target); break;
    case 'clearDraft':
      el.message.value = '';
      draftChanged();
      break;
    case 'alert': alertMatch(); break;
    case 'askNotify': askNotify(); break;
    case 'rememberAdult': rememberAdult(fx.value); break;
    case 'solve': startSolving(fx); break;
    case 'cancelSolve': stopSolving(); break;
  }
}

// ---- proof of work: one job at a time, in a Web Worker -------------------------------------------

let job = null; // {salt, worker?, cancelled}

function stopSolving() {
  if (!job) return;
  job.cancelled = true;
  job.worker?.terminate();
  job = null;
}

function solved(current, pow) {
  if (job !== current || current.cancelled) return;
  stopSolving();
  dispatch({ type: 'solved', salt: current.salt, pow });
}

/** The fallback when no worker can start: the same solver here, a batch per macrotask. */
function solveHere(current, { salt, bits, from }) {
  const subtle = globalThis.crypto?.subtle;
  const pause = () => new Promise((r) => setTimeout(r, 0));
  const pure = syncHasher(sha256);
  const hasher = subtle
    ? async (inputs) => { await pause(); return subtleHasher(subtle)(inputs); }
    : async (inputs) => { await pause(); return pure(inputs); };
  solve(salt, bits, hasher, { from, batch: subtle ? 256 : 64, shouldStop: () => current.cancelled })
    .then((pow) => { if (pow !== null) solved(current, pow); })
    .catch(() => {
      if (current.cancelled) return;
      solve(salt, bits, async (inputs) => { await pause(); return pure(inputs); }, { from, batch: 64, shouldStop: () => current.cancelled })
        .then((pow) => { if (pow !== null) solved(current, pow); });
    });
}

function startSolving(task) {
  stopSolving();
  const current = { salt: task.salt, cancelled: false };
  job = current;
  let worker;
  try {
    worker = new Worker(new URL('./pow-worker.js', import.meta.url), { type: 'module' });
  } catch {
    solveHere(current, task);
    return;
  }
  current.worker = worker;
  worker.onmessage = (e) => solved(current, e.data?.pow);
  worker.onerror = (e) => {
    e.preventDefault?.();
    worker.terminate();
    current.worker = null;
    if (job === current && !current.cancelled) solveHere(current, task);
  };
  worker.postMessage({ salt: task.salt, bits: task.bits, from: task.from });
}

function focus(target) {
  const active = document.activeElement;
  if (target === 'message') {
    if (!el.message.disabled) el.message.focus();
  } else if (target === 'start') (el.start.disabled ? el.adult : el.start).focus();
  else if (target === 'contactEdit') el.contactEdit.focus();
  else if (target === 'afterReport') {
    // Back where the user was: the Report button, else the Message box, else the status line.
    if (!el.report.hidden) el.report.focus();
    else if (!el.message.disabled) el.message.focus();
    else if (!el.newStranger.hidden) el.newStranger.focus();
    else el.status.focus({ preventScroll: true });
  }
  else if (target === 'status') el.status.focus({ preventScroll: true });
  else if (target === 'ended') {
    // Not onto New stranger from the Message box: an Enter meant for Send would press it.
    if (active === el.message || active === document.body || !active) el.chat.focus();
    else if (active.disabled || active.hidden) el.newStranger.focus();
  }
}

// ---- rendering -------------------------------------------------------------------------------

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function render() {
  const s = state;
  el.landing.hidden = s.view !== 'landing';
  el.chat.hidden = s.view !== 'chat';
  setText(el.online, onlineText(s.online));
  renderTags(s.interests);
  setText(el.interestsHelp, s.interestError ? TEXT[s.interestError] : HELP);
  el.interestsHelp.classList.toggle('error', Boolean(s.interestError));
  el.adult.checked = s.adult;
  el.start.disabled = !canStart(s);
  el.tipReport.hidden = !hasFeature(s, 'report');

  setText(el.status, statusText(s));
  el.status.dataset.phase = s.phase;
  el.typing.hidden = !s.partnerTyping;
  setText(el.hint, hintText(s));
  setText(el.notice, noticeText(s));
  renderMessages(s.messages);

  const chatting = s.phase === 'chatting';
  el.message.disabled = !chatting;
  el.send.disabled = !chatting;
  const offerNew = showNewStranger(s);
  el.newStranger.hidden = !offerNew;
  el.skip.hidden = offerNew;
  el.skip.disabled = !canSkip(s);
  el.report.hidden = !canReport(s);
  renderReportDialog(s);
  el.contactWarning.hidden = s.contactWarning === null;
  setText(el.contactText, s.contactWarning === null ? '' : TEXT.contactWarning);
  const title = titleText(s);
  if (document.title !== title) document.title = title;
  syncStatsPoll();
}

function renderReportDialog(s) {
  const d = el.reportDialog;
  if (s.reportDialog && !d.open) {
    el.reportForm.elements.reason.value = 'other'; // the default reason, every time
    d.showModal();
    el.reportForm.querySelector('input[name="reason"]:checked')?.focus();
  } else if (!s.reportDialog && d.open) {
    d.close();
  }
}

let tagsShown = '';
function renderTags(list) {
  const key = list.join('\n');
  if (key === tagsShown) return;
  tagsShown = key;
  el.tags.replaceChildren(...list.map((tag) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'tag';
    b.dataset.tag = tag;
    b.setAttribute('aria-label', `Remove interest ${tag}`);
    const name = document.createElement('span');
    name.textContent = tag;
    const x = document.createElement('span');
    x.className = 'x';
    x.setAttribute('aria-hidden', 'true');
    x.textContent = '×';
    b.append(name, x);
    li.append(b);
    return li;
  }));
}

// Messages are append-only between resets (a new match or Start clears them).
const shown = new Map(); // message id -> {li, msg}
let firstShown = null;
let pinned = true; // the list is scrolled to the newest message

function renderMessages(list) {
  if ((list[0]?.id ?? null) !== firstShown) {
    el.log.replaceChildren();
    shown.clear();
    firstShown = list[0]?.id ?? null;
    pinned = true;
  }
  let added = false;
  let mine = false;
  for (const m of list) {
    const had = shown.get(m.id);
    if (had) {
      if (had.msg !== m) had.li.classList.toggle('failed', Boolean(m.failed));
      had.msg = m;
      continue;
    }
    const li = document.createElement('li');
    li.className = m.kind === 'system' ? 'system' : `msg ${m.kind}`;
    li.textContent = m.text;
    if (m.failed) li.classList.add('failed');
    el.log.append(li);
    shown.set(m.id, { li, msg: m });
    added = true;
    mine ||= m.kind === 'me';
  }
  if (!added) return;
  if (pinned || mine) scrollToEnd();
  else el.jump.hidden = false;
}

function scrollToEnd() {
  el.log.scrollTop = el.log.scrollHeight;
  pinned = true;
  el.jump.hidden = true;
}

el.log.addEventListener('scroll', () => {
  pinned = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
  if (pinned) el.jump.hidden = true;
});
// The list shrinks when the keyboard opens or the typing line shows: stay at the end if we were.
new ResizeObserver(() => { if (pinned) el.log.scrollTop = el.log.scrollHeight; }).observe(el.log);
el.jump.addEventListener('click', () => { scrollToEnd(); el.message.focus(); });

// ---- the Message box -------------------------------------------------------------------------

function draftChanged() {
  const n = charCount(el.message.value);
  const text = counterText(n);
  setText(el.counter, text);
  el.counter.hidden = text === '';
  el.counter.classList.toggle('over', n > MAX_TEXT_CHARS);
  // Grow with the text, up to the CSS max-height (CSSOM styles are allowed by the CSP).
  el.message.style.height = 'auto';
  el.message.style.height = `${el.message.scrollHeight + 2}px`;
}

function sendDraft() {
  dispatch({ type: 'send', text: el.message.value, allowed: client.canSendMessage() });
}

el.message.addEventListener('input', () => {
  draftChanged();
  dispatch({ type: 'input', text: el.message.value });
});
el.message.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    sendDraft();
  }
});
el.send.addEventListener('click', () => { sendDraft(); el.message.focus(); });

// ---- buttons and keys ------------------------------------------------------------------------

function commitInterests(all) {
  const r = takeInterests(state.interests, el.interests.value, all);
  if (el.interests.value !== r.rest) el.interests.value = r.rest;
  dispatch({ type: 'setInterests', list: r.list, error: r.error });
  return r.error === null;
}

el.interests.addEventListener('input', () => {
  if (el.interests.value.includes(',')) commitInterests(false);
});
el.interests.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.isComposing) {
    e.preventDefault();
    commitInterests(true);
  } else if (e.key === 'Backspace' && el.interests.value === '' && state.interests.length) {
    dispatch({ type: 'removeInterest', tag: state.interests.at(-1) });
  }
});
el.tags.addEventListener('click', (e) => {
  const b = e.target.closest('button.tag');
  if (!b) return;
  dispatch({ type: 'removeInterest', tag: b.dataset.tag });
  el.interests.focus();
});

el.start.addEventListener('click', () => {
  if (el.interests.value.trim() !== '' && !commitInterests(true)) {
    el.interests.focus();
    return;
  }
  dispatch({ type: 'start' });
});
el.adult.addEventListener('change', () => dispatch({ type: 'adult', value: el.adult.checked }));
el.skip.addEventListener('click', () => dispatch({ type: 'skip' }));
el.report.addEventListener('click', () => dispatch({ type: 'reportOpen' }));
el.reportForm.addEventListener('submit', (e) => {
  e.preventDefault();
  dispatch({ type: 'reportConfirm', reason: el.reportForm.elements.reason.value });
});
el.reportCancel.addEventListener('click', () => dispatch({ type: 'reportCancel' }));
// Esc (the dialog's own cancel) and any other way it closes: the same as Cancel.
el.reportDialog.addEventListener('close', () => {
  if (state.reportDialog) dispatch({ type: 'reportCancel' });
});
el.contactEdit.addEventListener('click', () => dispatch({ type: 'editContact' }));
el.contactSend.addEventListener('click', () =>
  dispatch({ type: 'sendAnyway', allowed: client.canSendMessage() }));
el.newStranger.addEventListener('click', () => dispatch({ type: 'newStranger' }));
el.stop.addEventListener('click', () => dispatch({ type: 'stop' }));

document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape' || e.isComposing || state.view !== 'chat') return;
  if (el.reportDialog.open) return; // the dialog's own Esc cancels it
  e.preventDefault();
  dispatch({ type: 'esc' });
});

document.addEventListener('visibilitychange', () => dispatch({ type: 'visibility', hidden: isHidden() }));
addEventListener('offline', () => client.drop());
addEventListener('online', () => client.connect());

// ---- the online count, polled while the landing view shows -------------------------------------

let statsTimer = null;
let statsBusy = false;

async function fetchStats() {
  if (statsBusy) return;
  statsBusy = true;
  try {
    const res = await fetch('/api/stats', { cache: 'no-store' });
    if (res.ok) {
      const { online } = await res.json();
      if (Number.isFinite(online)) dispatch({ type: 'online', online });
    }
  } catch {
    // offline or restarting: keep the last count
  } finally {
    statsBusy = false;
  }
}

function syncStatsPoll() {
  const want = state.view === 'landing' && !state.hidden;
  if (want && statsTimer === null) {
    statsTimer = setInterval(fetchStats, STATS_EVERY_MS);
    queueMicrotask(fetchStats);
  } else if (!want && statsTimer !== null) {
    clearInterval(statsTimer);
    statsTimer = null;
  }
}

// ---- sound and notifications (new match while the tab is hidden, only if allowed) -------------

let audio = null;
const canNotify = () => 'Notification' in window && Notification.permission === 'granted';

let notifyAsked = false;
function askNotify() {
  // Called from the Start chatting click. Ask once per visit: the browser remembers an answer
  // itself, and the page keeps nothing in storage but the 18+ tick (PROTOCOL.md, "Page").
  try {
    if (!audio && window.AudioContext) audio = new AudioContext();
    if (audio?.state === 'suspended') audio.resume().catch(() => {});
  } catch { /* no audio */ }
  if (notifyAsked || !('Notification' in window) || Notification.permission !== 'default') return;
  notifyAsked = true;
  Notification.requestPermission().catch(() => {});
}

function beep() {
  if (!audio) return;
  const t = audio.currentTime;
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.setValueAtTime(660, t);
  osc.frequency.setValueAtTime(880, t + 0.09);
  gain.gain.setValueAtTime(0.0001, t);
  gain.gain.exponentialRampToValueAtTime(0.12, t + 0.02);
  gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.25);
  osc.connect(gain).connect(audio.destination);
  osc.start(t);
  osc.stop(t + 0.26);
}

function alertMatch() {
  if (!canNotify()) return;
  try { beep(); } catch { /* audio blocked */ }
  try {
    const n = new Notification('stranger-relay', {
      body: statusText(state), icon: 'favicon.svg', tag: 'stranger-relay-match',
    });
    n.onclick = () => { window.focus(); n.close(); };
  } catch { /* some mobile browsers only notify from a service worker */ }
}

render();
draftChanged();
dispatch({ type: 'init' });
