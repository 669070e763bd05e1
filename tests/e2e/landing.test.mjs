// The landing view and the look of the page: interests, the online count, a phone-sized page,
// and the screenshots (test-output/screenshots/, and docs/screenshot.png on request).

import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  TEXT,
  expectShown,
  expectText,
  horizontalOverflow,
  launchBrowser,
  norm,
  scenario,
  screenshot,
  textOf,
  waitFor,
} from './lib.mjs';
import { REPO_ROOT } from './server.mjs';

// A missing Chromium fails the whole file here, loudly (never a skip).
const browser = await launchBrowser();
after(async () => {
  await browser.close();
});

const removeButtons = (s) =>
  s.page.getByRole('button', { name: /^Remove interest / }).evaluateAll((els) =>
    els.map((el) => (el.getAttribute('aria-label') || el.textContent).trim()),
  );

describe('landing and looks', { concurrency: 3 }, () => {
  test('interests pair the two who share a tag, and the status names it', async () => {
    // A long interest wait, so that nobody falls back to "anyone" during the test.
    await scenario(browser, { INTEREST_WAIT_SECS: '60' }, async ({ open }) => {
      const c = await open('C (chess)');
      const a = await open('A (cats, jazz music)');
      const b = await open('B (jazz music, dogs)');

      // Tags: Enter or comma adds, normalised like the server, duplicates ignored, removable.
      await a.addInterest('  CATS ');
      await a.interestsField.fill('Jazz   Music');
      await a.interestsField.press(',');
      await a.addInterest('cats');
      await a.addInterest('gone soon');
      await waitFor(async () => (await removeButtons(a)).length === 3, {
        what: async () => `three tags on A, it shows ${JSON.stringify(await removeButtons(a))}`,
      });
      await a.button('Remove interest gone soon').click();
      await waitFor(async () => (await removeButtons(a)).length === 2, { what: 'the removed tag to go' });
      await expectShown(a.button('Remove interest cats'), { what: 'the tag "cats"' });
      await expectShown(a.button('Remove interest jazz music'), { what: 'the tag "jazz music"' });
      assert.equal(await a.interestsField.inputValue(), '', 'the field is emptied once the tag is added');

      await b.addInterest('jazz music');
      await b.addInterest('dogs');
      await c.addInterest('chess');

      // C waits first, then A, who shares nothing with C, then B, who shares "jazz music" with A.
      await c.start();
      await c.waitStatus(TEXT.looking);
      await a.start();
      await a.waitStatus(TEXT.looking);
      await b.start();
      await a.waitStatus(TEXT.matchedLiking(['jazz music']));
      await b.waitStatus(TEXT.matchedLiking(['jazz music']));
      await a.send('we both like jazz music');
      await b.waitForStrangerMessage('we both like jazz music');
      assert.equal(norm(await textOf(c.status)), TEXT.looking, 'C, who shares nothing, still waits');
      assert.deepEqual(await c.strangerTexts(), []);
    });
  });

  test('the online count follows the open pages', async () => {
    await scenario(browser, {}, async ({ open }) => {
      // "N online" counts open sessions (WebSockets): every open page holds one from its load.
      const sockets = new Map();
      const track = (s) => {
        sockets.set(s, []);
        s.page.on('websocket', (ws) => sockets.get(s).push(ws));
      };
      const pages = [];
      for (const name of ['P1', 'P2', 'P3']) pages.push(await open(name, {}, { beforeGoto: track }));
      for (const p of pages) {
        await waitFor(() => sockets.get(p).some((ws) => !ws.isClosed()), {
          what: `${p.name}, open on the landing view, to hold its WebSocket`,
        });
      }
      // Refreshed every 5 s while the landing view shows.
      for (const p of pages) {
        await expectText(p.online, '3 online', { timeout: 7000, what: `${p.name}'s #online` });
      }
      await pages[2].page.close();
      for (const p of pages.slice(0, 2)) {
        await expectText(p.online, '2 online', { timeout: 7000, what: `${p.name}'s #online after P3 closed` });
      }
    });
  });

  test('a 375 px wide phone page has no horizontal overflow', async () => {
    const phone = {
      viewport: { width: 375, height: 740 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    };
    await scenario(browser, {}, async ({ open }) => {
      const m = await open('phone', phone);
      const d = await open('desktop');
      for (const tag of ['hiking', 'board games', 'thirty two characters long tag!!']) {
        await m.addInterest(tag);
      }
      await waitFor(async () => (await removeButtons(m)).length === 3, { what: 'three tags on the phone' });
      await expectText(m.online, /^\d+ online$/, { what: "the phone's #online" });
      assert.equal(await horizontalOverflow(m.page), null, 'landing view overflows');

      await d.addInterest('hiking');
      await m.startButton.tap();
      await m.waitStatus(TEXT.looking);
      await d.start();
      await m.waitStatus(TEXT.matchedLiking(['hiking']));
      assert.equal(await horizontalOverflow(m.page), null, 'chat view (just matched) overflows');

      const long = 'https://example.com/' + 'a-very-long-path-without-any-space-'.repeat(6);
      await d.send('Hi! Where do you like to hike?');
      await m.waitForStrangerMessage('Hi! Where do you like to hike?');
      await m.messageBox.tap();
      await m.send('Mostly in the mountains, any tips?');
      await d.waitForStrangerMessage('Mostly in the mountains, any tips?');
      await d.send(long);
      await m.waitForStrangerMessage(long);
      await d.messageBox.pressSequentially('Try the', { delay: 30 });
      await expectShown(m.typing, { what: "the phone's #typing" });
      assert.equal(await horizontalOverflow(m.page), null, 'chat view with messages overflows');
      await screenshot(m.page, 'phone.png');
    });
  });

  test('screenshots: landing, chat in light and dark', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const a = await open('light', { colorScheme: 'light', viewport: { width: 1200, height: 800 } });
      await a.addInterest('music');
      await a.addInterest('books');
      await expectText(a.online, /^\d+ online$/, { what: '#online' });
      await screenshot(a.page, 'landing.png');

      const b = await open('dark', { colorScheme: 'dark', viewport: { width: 1200, height: 800 } });
      await b.addInterest('music');
      await b.addInterest('films');
      await a.start();
      await a.waitStatus(TEXT.looking);
      await b.start();
      await a.waitStatus(TEXT.matchedLiking(['music']));
      await b.waitStatus(TEXT.matchedLiking(['music']));

      const talk = [
        [a, b, 'Hi! What are you listening to these days?'],
        [b, a, 'Mostly old jazz records, and you?'],
        [a, b, 'A lot of synth pop. Any album you would recommend?'],
        [b, a, 'Kind of Blue, a classic. <b>Not bold</b>, by the way.'],
      ];
      for (const [from, to, text] of talk) {
        await from.send(text);
        await to.waitForStrangerMessage(text);
      }
      await b.messageBox.pressSequentially('Also try', { delay: 30 });
      await expectShown(a.typing, { what: "the light page's #typing" });
      const light = await screenshot(a.page, 'chat-light.png');
      await a.messageBox.pressSequentially('Thanks', { delay: 30 });
      await expectShown(b.typing, { what: "the dark page's #typing" });
      await screenshot(b.page, 'chat-dark.png');

      if (process.env.UPDATE_DOCS_SCREENSHOT === '1') {
        await copyFile(light, path.join(REPO_ROOT, 'docs', 'screenshot.png'));
      }
    });
  });
});
