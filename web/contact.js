// contact.js — does a message look like contact details? (PROTOCOL.md, "Page"): a phone number
// (7 or more digits with spaces, dots, dashes or brackets), an e-mail address, an @handle, the
// words snap, insta, telegram, whatsapp, discord, kik followed by a name, or links such as wa.me,
// t.me, discord.gg. Pure; the page warns before sending and nothing about it leaves the page.
// It is a nudge, not a filter: "Send anyway" is always there, so it errs towards few false alarms.

const LINK =
  /(?:^|[^\w.-])(?:https?:\/\/)?(?:www\.)?(?:wa\.me|t\.me|telegram\.(?:me|dog)|discord\.gg|discord(?:app)?\.com\/invite|chat\.whatsapp\.com|snapchat\.com\/add|instagram\.com|kik\.me|ig\.me|m\.me)(?:\/|\b)/i;

const EMAIL = /[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}/u;

// @ not after a letter or digit (that is an e-mail), then a name with at least one letter.
const HANDLE = /(?:^|[^\p{L}\p{N}_.@])@(?=[\w.]*[A-Za-z])[\w.]{2,30}/u;

// Digits with single separators between them (space, dot, dash, brackets), an optional leading +.
const PHONE_RUN = /\+?\(?\d(?:[ .\-()]{0,2}\d)+\)?/g;
const DATE = /^(?:\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}[./-]\d{1,2}[./-]\d{1,2})$/;

const APPS = 'snap(?:chat)?|insta(?:gram)?|telegram|whats\\s?app|discord|kik';
// The app's name, an optional "is", "id", "me at", ":", "-", "=", "@", then a name of 3+ characters.
const APP_NAME = new RegExp(
  `\\b(?:${APPS})\\b(?:\\s*(?:[:=\\-]|\\bis\\b|\\bid\\b|\\bname\\b|\\busername\\b|\\bme\\s+at\\b|\\bat\\b))*\\s*@?([\\p{L}\\p{N}_.]{3,30})`,
  'giu',
);
// Words that follow an app's name in ordinary talk ("I love insta too", "discord server").
const NOT_A_NAME = new Set(`
  and or the too also are was were you your yours him her his hers its them they their our ours
  with but for from not now then than that this these those there here when what which who why
  how yes yeah nah nope lol lmao haha okay its it's isn't isnt don't dont can't cant won't anymore
  much lot lots all any some every thing things though tho anyway because cause like likes liked
  app apps account accounts server servers group groups chat chats story stories post posts reel
  reels pic pics photo photos video videos call calls voice nitro bot bots user users username
  name handle streak streaks filter filters friends people game games gaming either neither
  more less back sometimes later today tonight tomorrow yesterday always never ever much very
  really just only still even sucks stuff message messages dm dms link links profile profiles
  sometime please maybe about after before into onto over under again since while would could
  should will have has had did does doing done being been get got gets getting use used using
  fun cool great good bad better worse best worst dead boring down weird annoying toxic free
  popular banned blocked broken open closed nice
`.split(/\s+/).filter(Boolean));

function phoneLike(text) {
  for (const m of text.matchAll(PHONE_RUN)) {
    const run = m[0];
    const digits = run.replace(/\D/g, '').length;
    if (digits < 7) continue;
    if (DATE.test(run.replace(/[()+]/g, ''))) continue;
    return true;
  }
  return false;
}

function appName(text) {
  for (const m of text.matchAll(APP_NAME)) {
    const name = m[1].replace(/[._]+$/, '').toLowerCase();
    if (name.length >= 3 && !NOT_A_NAME.has(name)) return true;
  }
  return false;
}

/** What kind of contact detail `text` seems to hold: 'link', 'email', 'phone', 'handle', 'app', or null. */
export function contactKind(text) {
  if (typeof text !== 'string' || text === '') return null;
  if (LINK.test(text)) return 'link';
  if (EMAIL.test(text)) return 'email';
  if (phoneLike(text)) return 'phone';
  if (HANDLE.test(text)) return 'handle';
  if (appName(text)) return 'app';
  return null;
}

export const looksLikeContact = (text) => contactKind(text) !== null;
