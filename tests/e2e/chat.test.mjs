// Two (or three) strangers in separate browser contexts: matching, messages, typing, skipping,
// stopping, closing. Every test has a server of its own, so the tests run side by side.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import {
  TEXT,
  expectNotShown,
  expectShown,
  expectText,
  launchBrowser,
  norm,
  scenario,
  shown,
  textOf,
  waitFor,
} from './lib.mjs';

// A missing Chromium fails the whole file here, loudly (never a skip).
const browser = await launchBrowser();
after(async () => {
  await browser.close();
});

describe('chatting', { concurrency: 3 }, () => {
  test('both press Start chatting, are matched, and a message goes across', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const a = await open('A');
      const b = await open('B');

      // The landing view of the contract.
      assert.equal(await a.page.title(), TEXT.title);
      assert.equal(norm(await textOf(a.page.getByRole('heading', { level: 1 }))), 'stranger-relay');
      await expectShown(a.page.getByText(TEXT.note, { exact: true }), { what: 'the note' });
      await expectText(a.online, /^\d+ online$/, { what: '#online' });
      await expectShown(a.interestsField, { what: 'the Interests field' });

      await a.start();
      await a.waitStatus(TEXT.looking);
      assert.equal(await a.status.getAttribute('role'), 'status', '#status has role="status"');
      await b.start();
      await a.waitStatus(TEXT.matched);
      await b.waitStatus(TEXT.matched);

      // The chat view of the contract.
      for (const s of [a, b]) {
        const log = s.page.locator('#messages');
        assert.equal(await log.getAttribute('role'), 'log', '#messages has role="log"');
        assert.equal(await log.getAttribute('aria-live'), 'polite', '#messages has aria-live="polite"');
        assert.equal(await s.page.locator('#messages li').count(), 0, 'the match is said once, in #status, not again in the log');
        await expectShown(s.messageBox, { what: `${s.name}'s Message box` });
        assert.equal(await s.messageBox.evaluate((el) => el.tagName), 'TEXTAREA', 'the Message box is a textarea');
        for (const name of ['Send', 'Skip', 'Stop']) {
          await expectShown(s.button(name), { what: `${s.name}'s ${name} button` });
        }
        assert.equal(await s.typing.evaluate((el) => el.hidden), true, '#typing has the hidden attribute');
      }

      // Enter in the Message box sends.
      await a.messageBox.fill('hello from A');
      await a.messageBox.press('Enter');
      await b.waitForStrangerMessage('hello from A');
      await waitFor(async () => (await a.fromMe.evaluateAll((els) => els.map((e) => e.textContent))).includes('hello from A'), {
        what: "A's own message as li.msg.me",
      });
      assert.equal(await a.messageBox.inputValue(), '', 'the Message box is emptied after sending');

      // The Send button sends too, and the other way round.
      await b.messageBox.fill('hi A, B here');
      await b.button('Send').click();
      await a.waitForStrangerMessage('hi A, B here');
      assert.deepEqual(await a.strangerTexts(), ['hi A, B here']);
      assert.deepEqual(await b.strangerTexts(), ['hello from A']);
    });
  });

  test('the typing indicator shows while the stranger types and goes after a pause and on send', async () => {
    await scenario(browser, {}, async ({ pair }) => {
      const [a, b] = await pair();
      assert.equal(await b.typing.evaluate((el) => el.hidden), true, '#typing starts hidden');

      await a.messageBox.pressSequentially('hello the', { delay: 40 });
      await expectShown(b.typing, { what: "B's #typing while A types" });
      assert.equal(norm(await textOf(b.typing)), TEXT.typing);
      assert.equal(await shown(a.typing), false, "A's own typing does not show on A's page");

      // A pauses: the indicator goes away by itself.
      await waitFor(() => b.typing.evaluate((el) => el.hidden), {
        timeout: 15_000,
        what: "B's #typing to get the hidden attribute after A paused",
      });
      assert.equal(await shown(b.typing), false, 'hidden #typing is not rendered');

      // A types again, then sends: the indicator goes away with the message.
      await a.messageBox.pressSequentially('re', { delay: 40 });
      await expectShown(b.typing, { what: "B's #typing when A types again" });
      await a.messageBox.press('Enter');
      await b.waitForStrangerMessage('hello there');
      await waitFor(() => b.typing.evaluate((el) => el.hidden), {
        timeout: 1500,
        what: "B's #typing to be hidden once A's message arrived",
      });
    });
  });

  test('a message is shown as text, never as HTML', async () => {
    await scenario(browser, {}, async ({ pair }) => {
      const [a, b] = await pair();
      const xss = '<img src=x onerror=alert(1)>';
      const more = ['<script>alert(2)</script>', '&lt;b&gt;bold&lt;/b&gt; & "quotes"'];
      await a.send(xss);
      await b.waitForStrangerMessage(xss);
      for (const text of more) {
        await a.send(text);
        await b.waitForStrangerMessage(text);
      }
      const li = b.fromStranger.first();
      assert.equal(await li.evaluate((el) => el.textContent), xss, "the li's textContent is the string itself");
      assert.equal(await li.evaluate((el) => el.children.length), 0, 'the li has no child element');
      for (const s of [a, b]) {
        assert.equal(await s.page.locator('#messages img').count(), 0, `no img inside ${s.name}'s #messages`);
        assert.equal(await s.page.locator('#messages script').count(), 0, `no script inside ${s.name}'s #messages`);
      }
      assert.equal(await a.fromMe.first().evaluate((el) => el.textContent), xss, "the sender's li shows it literally too");
      // The scenario fails if any dialog opened on either page; give a broken onerror its chance.
      await b.page.evaluate(() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 100))));
      assert.deepEqual([...a.dialogs, ...b.dialogs], []);
    });
  });

  test('Shift+Enter makes a new line, Enter sends; the counter shows from 1800 characters', async () => {
    await scenario(browser, {}, async ({ pair }) => {
      const [a, b] = await pair();
      await a.messageBox.click();
      await a.page.keyboard.type('line one');
      await a.page.keyboard.press('Shift+Enter');
      await a.page.keyboard.type('line two');
      assert.equal(await a.messageBox.inputValue(), 'line one\nline two', 'Shift+Enter put a newline in the box');
      assert.equal(await a.fromMe.count(), 0, 'Shift+Enter did not send');
      await a.page.keyboard.press('Enter');
      await b.waitForStrangerMessage('line one\nline two');
      assert.equal(await a.messageBox.inputValue(), '');

      // Counter: `N/2000` once 1800 characters are reached.
      const counter = a.page.locator('#counter');
      await a.messageBox.fill('x'.repeat(1799));
      await waitFor(async () => !(await shown(counter)) || !/^\d+\/2000$/.test(norm(await textOf(counter))), {
        what: '#counter to show nothing below 1800 characters',
      });
      await a.messageBox.fill('x'.repeat(1800));
      await expectText(counter, '1800/2000', { what: '#counter' });
      await expectShown(counter, { what: '#counter at 1800 characters' });
    });
  });

  test('Skip: the partner is told, and the skipper meets a third stranger', async () => {
    await scenario(browser, {}, async ({ open, pair }) => {
      const [a, b] = await pair();
      await a.button('Skip').click();
      await b.waitStatus(TEXT.disconnected);
      await expectShown(b.button('New stranger'), { what: "B's New stranger button" });
      await a.waitStatus([TEXT.looking, TEXT.skipped]);

      const c = await open('C');
      await c.start();
      await c.waitStatus(TEXT.matched);
      await a.waitStatus(TEXT.matched);
      await c.send('C says hi');
      await a.waitForStrangerMessage('C says hi');
      await a.send('A meets C');
      await c.waitForStrangerMessage('A meets C');
      assert.ok(!(await b.strangerTexts()).includes('C says hi'), 'B is not in the new room');

      // B starts again from its New stranger button and waits for someone new.
      await b.button('New stranger').click();
      await b.waitStatus(TEXT.looking);
    });
  });

  test('closing one page tells the other at once', async () => {
    await scenario(browser, {}, async ({ pair }) => {
      const [a, b] = await pair();
      await b.page.close();
      await a.waitStatus(TEXT.disconnected, 3000);
      await expectShown(a.button('New stranger'), { what: "A's New stranger button" });
    });
  });

  test('Esc: one press shows the hint and does not skip, two presses skip', async () => {
    await scenario(browser, {}, async ({ pair }) => {
      const [a, b] = await pair();
      await a.messageBox.click();
      await a.page.keyboard.press('Escape');
      await expectText(a.hint, TEXT.escHint, { what: "A's #hint" });
      await expectShown(a.hint, { what: "A's #hint" });

      // Still in the same room: a message goes across both ways and nobody was told anything.
      await b.send('are you still there?');
      await a.waitForStrangerMessage('are you still there?');
      await a.send('yes');
      await b.waitForStrangerMessage('yes');
      assert.equal(norm(await textOf(a.status)), TEXT.matched, 'one Esc did not skip');
      assert.equal(norm(await textOf(b.status)), TEXT.matched, 'the partner was not told anything');

      // Two presses within 3 s skip (whether or not the window of the first press is still open,
      // the second of these two is within 3 s of the first).
      await a.page.keyboard.press('Escape');
      await a.page.keyboard.press('Escape');
      await b.waitStatus(TEXT.disconnected);
      await a.waitStatus([TEXT.looking, TEXT.skipped]);
    });
  });

  test('Stop goes back to the landing view and the partner is told', async () => {
    await scenario(browser, {}, async ({ pair }) => {
      const [a, b] = await pair();
      await a.button('Stop').click();
      await expectShown(a.startButton, { what: "A's Start chatting button after Stop" });
      await expectNotShown(a.messageBox, { what: "A's Message box after Stop" });
      await b.waitStatus(TEXT.disconnected);
      await expectShown(b.button('New stranger'), { what: "B's New stranger button" });
    });
  });
});
