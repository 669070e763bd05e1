// Shared pieces of the end-to-end suite: the browser, polling waits, the page contract's texts
// (docs/ui-contract.md) and a "stranger" (one browser context with one page of the site).

import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { REPO_ROOT, startServer } from './server.mjs';

export const SCREENSHOT_DIR = path.join(REPO_ROOT, 'test-output', 'screenshots');

// Exact texts from docs/ui-contract.md.
export const TEXT = {
  title: 'stranger-relay',
  note: 'Chats are anonymous and never stored.',
  looking: 'Looking for a stranger…',
  matched: "You're now chatting with a random stranger. Say hi!",
  matchedLiking: (tags) =>
    `You're now chatting with a random stranger. You both like: ${tags.join(', ')}. Say hi!`,
  disconnected: 'Stranger has disconnected.',
  skipped: 'You skipped.',
  typing: 'Stranger is typing…',
  escHint: 'Press Esc again to skip.',
  tooFast: "You're sending messages too fast.",
  tooLong: 'That message is too long.',
  // Safety (PROTOCOL.md "Page").
  adult: 'I am 18 or older',
  tips: [
    'Strangers may lie about who they are.',
    'Never share your name, phone, address, school or social handles.',
    'You can leave at any time: Skip or Stop.',
  ],
  contactTitle: 'Share contact details?',
  contactWarning:
    'This looks like contact details. Strangers may not be who they say they are, and a phone ' +
    'number, e-mail or handle lets them find you outside this chat.',
};

/** The localStorage key that remembers the 18+ tick (docs/ui-contract.md). */
export const ADULT_KEY = 'adult-ok';

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Debian's Chromium; a missing executable is a failure, never a skip. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(
      `Chromium not found at ${executablePath}. The end-to-end tests need it: install it with ` +
        '`apt-get update && apt-get install -y chromium` (or point CHROMIUM_PATH at a Chromium).',
    );
  }
  return chromium.launch({ executablePath, args: CHROMIUM_ARGS });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value, which it returns; throws after `timeout` ms. */
export async function waitFor(fn, { timeout = 5000, interval = 50, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  let detail = '';
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      if (typeof what === 'function') detail = await Promise.resolve(what()).catch(() => '');
      else detail = what;
      throw new Error(
        `timed out after ${timeout} ms waiting for ${detail}` +
          (lastError ? ` (last error: ${lastError.message.split('\n')[0]})` : ''),
      );
    }
    await sleep(interval);
  }
}

export const norm = (s) => (s == null ? s : s.replace(/\s+/g, ' ').trim());

/** textContent of the first element matching the locator, or null; never waits. */
export async function textOf(locator) {
  return locator.evaluateAll((els) => (els.length ? els[0].textContent : null));
}

function matches(actual, expected) {
  if (actual == null) return false;
  if (expected instanceof RegExp) return expected.test(actual);
  if (Array.isArray(expected)) return expected.some((e) => matches(actual, e));
  return actual === expected;
}

/** Waits until the (white-space-normalised) text of `locator` is `expected` (string, RegExp, or a list of either). */
export async function expectText(locator, expected, { timeout = 5000, what = String(locator) } = {}) {
  let last;
  await waitFor(
    async () => {
      last = norm(await textOf(locator));
      return matches(last, expected);
    },
    {
      timeout,
      what: () => `${what} to read ${JSON.stringify(expected instanceof RegExp ? String(expected) : expected)}, it reads ${JSON.stringify(last)}`,
    },
  );
  return last;
}

/** True when the element is shown: present, without the `hidden` attribute, and rendered. */
export async function shown(locator) {
  return locator.evaluateAll((els) => {
    const el = els[0];
    if (!el || el.hidden || el.closest('[hidden]')) return false;
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') return false;
    const box = el.getBoundingClientRect();
    return box.width > 0 && box.height > 0;
  });
}

export async function expectShown(locator, { timeout = 5000, what = String(locator) } = {}) {
  await waitFor(() => shown(locator), { timeout, what: `${what} to be shown` });
}

export async function expectNotShown(locator, { timeout = 5000, what = String(locator) } = {}) {
  await waitFor(async () => !(await shown(locator)), { timeout, what: `${what} to be hidden` });
}

/** document.documentElement.scrollWidth <= clientWidth, or a description of the overflow. */
export async function horizontalOverflow(page) {
  return page.evaluate(() => {
    const root = document.documentElement;
    if (root.scrollWidth <= root.clientWidth) return null;
    const wide = [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > root.clientWidth + 0.5)
      .slice(0, 5)
      .map((el) => `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}${el.className && typeof el.className === 'string' ? '.' + el.className.trim().replace(/\s+/g, '.') : ''} (right edge ${Math.round(el.getBoundingClientRect().right)})`);
    return `scrollWidth ${root.scrollWidth} > clientWidth ${root.clientWidth}; widest: ${wide.join(', ')}`;
  });
}

export async function screenshot(page, name) {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, name);
  await page.screenshot({ path: file, animations: 'disabled' });
  return file;
}

/** One person: a browser context of its own (own cookies, own socket) with the site open. */
export class Stranger {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.pageErrors = [];
    this.dialogs = [];
    this.consoleErrors = [];
    page.on('pageerror', (err) => this.pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (msg.type() === 'error') this.consoleErrors.push(msg.text());
    });
    page.on('dialog', (dialog) => {
      this.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
  }

  button(name) {
    return this.page.getByRole('button', { name, exact: true });
  }
  get startButton() {
    return this.button('Start chatting');
  }
  get adultBox() {
    return this.page.getByRole('checkbox', { name: TEXT.adult, exact: true });
  }
  get contactWarning() {
    return this.page.getByRole('alertdialog', { name: TEXT.contactTitle, exact: true });
  }
  get messageBox() {
    return this.page.getByRole('textbox', { name: 'Message', exact: true });
  }
  get interestsField() {
    return this.page.getByLabel('Interests', { exact: true });
  }
  get status() {
    return this.page.locator('#status');
  }
  get typing() {
    return this.page.locator('#typing');
  }
  get hint() {
    return this.page.locator('#hint');
  }
  get notice() {
    return this.page.locator('#notice');
  }
  get online() {
    return this.page.locator('#online');
  }
  get fromStranger() {
    return this.page.locator('#messages li.msg.stranger');
  }
  get fromMe() {
    return this.page.locator('#messages li.msg.me');
  }

  async start() {
    await this.startButton.click();
  }

  async waitStatus(expected, timeout = 5000) {
    return expectText(this.status, expected, { timeout, what: `${this.name}'s #status` });
  }

  async addInterest(tag, key = 'Enter') {
    await this.interestsField.fill(tag);
    await this.interestsField.press(key);
  }

  /** Types `text` into the Message box and presses Enter. */
  async send(text) {
    await this.messageBox.fill(text);
    await this.messageBox.press('Enter');
  }

  /** Texts (textContent) of the stranger's messages shown on this page. */
  async strangerTexts() {
    return this.fromStranger.evaluateAll((els) => els.map((el) => el.textContent));
  }

  /** Waits until a message from the stranger whose textContent is exactly `text` is shown. */
  async waitForStrangerMessage(text, timeout = 5000) {
    let seen = [];
    await waitFor(
      async () => {
        seen = await this.strangerTexts();
        return seen.includes(text);
      },
      { timeout, what: () => `${this.name} to show the stranger's message ${JSON.stringify(text)}; stranger messages shown: ${JSON.stringify(seen)}` },
    );
  }

  async close() {
    await this.context.close().catch(() => {});
  }
}

/**
 * Runs one end-to-end scenario against a fresh server of its own (settings `env`), then closes
 * every context it opened and stops the server, whatever happened.
 */
export async function scenario(browser, env, body) {
  const server = await startServer(env);
  const strangers = [];
  /**
   * A new person with the site open; `beforeGoto(stranger)` runs before the page loads. Unless
   * `adult` is false, the 18+ box counts as ticked on an earlier visit (its localStorage key is
   * set before the page's scripts run), so Start chatting is enabled as before the notice.
   */
  const open = async (name, contextOptions = {}, { beforeGoto, adult = true } = {}) => {
    const context = await browser.newContext({ viewport: { width: 1024, height: 720 }, ...contextOptions });
    context.setDefaultTimeout(10_000);
    context.setDefaultNavigationTimeout(10_000);
    if (adult) {
      await context.addInitScript((key) => {
        try { localStorage.setItem(key, '1'); } catch { /* about:blank has no storage */ }
      }, ADULT_KEY);
    }
    const page = await context.newPage();
    const stranger = new Stranger(name, context, page);
    strangers.push(stranger);
    if (beforeGoto) await beforeGoto(stranger);
    await page.goto(`${server.url}/`);
    return stranger;
  };
  /** Two strangers who pressed Start chatting (a first, then b) and are matched. */
  const pair = async (optsA = {}, optsB = {}) => {
    const a = await open(optsA.name || 'A', optsA.context);
    const b = await open(optsB.name || 'B', optsB.context);
    await a.start();
    await a.waitStatus(TEXT.looking);
    await b.start();
    await Promise.all([a.waitStatus(TEXT.matched), b.waitStatus(TEXT.matched)]);
    return [a, b];
  };
  try {
    await body({ server, open, pair, strangers });
    // Nothing on any page may have thrown, and no dialog (alert, confirm) may have opened.
    for (const s of strangers) {
      if (s.pageErrors.length) throw new Error(`${s.name}'s page threw: ${s.pageErrors.join(' | ')}`);
      if (s.dialogs.length) throw new Error(`${s.name}'s page opened a dialog: ${s.dialogs.join(' | ')}`);
    }
  } catch (err) {
    const tail = server.logTail().trim();
    if (tail) err.message += `\n--- server output (tail) ---\n${tail}`;
    throw err;
  } finally {
    await Promise.all(strangers.map((s) => s.close()));
    await server.stop();
  }
}
