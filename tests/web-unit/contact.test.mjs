// Unit tests of web/contact.js: what raises the contact-detail warning, and what must not.
// Run: node --test tests/web-unit/

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { contactKind, looksLikeContact } from '../../web/contact.js';

const POSITIVE = {
  phone: [
    'call me 555 123 4567',
    '+44 7700 900123',
    '(555) 123-4567',
    '555.123.4567',
    '0612345678',
    'my number is 06-12-34-56-78',
    '+1 (202) 555-0143 after 6',
    '1234567',
  ],
  email: ['write to jane.doe@example.com', 'JOHN_99@mail.co.uk', 'me@exämple.de ok?'],
  handle: ['add me @cool_kid99', 'I am @jane.doe there', '@someone'],
  app: [
    'my snap is johnny99',
    'snapchat: cool_guy',
    'add me on insta jane.doe',
    'Instagram - janedoe',
    'telegram mike_22',
    'whatsapp me at bobby_b',
    'discord: gamer_1234',
    'kik suzy2010',
  ],
  link: ['wa.me/447700900123', 'https://t.me/somebody', 'join discord.gg/abcdef', 'discord.com/invite/xyz', 'chat.whatsapp.com/AbC'],
};

const NEGATIVE = [
  "I'm 25",
  'I am 25 years old and 180 cm',
  'that message has 2000 characters',
  'born in 1999',
  'it costs 1,000,000 dollars',
  'meet at 10:30 or 11:45',
  'on 12.05.2024 I moved',
  'since 2024-05-12',
  'version 1.2.3',
  'scores were 3-2 and 4-1',
  'top 10 of 2023',
  'I love insta too',
  'oh snap I forgot',
  'discord server is down',
  'is whatsapp better than telegram?',
  'snap is fun',
  'email me? no thanks',
  'an @ sign',
  'user@ nothing',
  'hello there, how are you?',
  'I use telegram and discord',
  'my kik account got banned',
  '',
];

test('contact details raise the warning, each of its kind', () => {
  for (const [kind, texts] of Object.entries(POSITIVE)) {
    for (const text of texts) {
      assert.equal(contactKind(text), kind, JSON.stringify(text));
      assert.equal(looksLikeContact(text), true);
    }
  }
});

test('ordinary numbers, dates and mentions of the apps do not', () => {
  for (const text of NEGATIVE) {
    assert.equal(contactKind(text), null, JSON.stringify(text));
    assert.equal(looksLikeContact(text), false);
  }
  assert.equal(looksLikeContact(undefined), false);
});
