#!/usr/bin/env python3
"""Writes the hand-written seed corpus of the fuzz targets into fuzz/seeds/<target>/.

Run from anywhere: python3 fuzz/gen_seeds.py. The files it writes are committed; libFuzzer's
own discoveries go to fuzz/corpus/<target>/ (git-ignored).

- frame: one client frame per file: every type, every error case, escapes, astral and
  combining characters, lone surrogate escapes, deep nesting, huge numbers, invalid UTF-8.
- interests and sequence read their input through arbitrary's `Unstructured`; their seeds are
  encoded as those decoders read them (one byte per small choice, `int_in_range` taking the
  byte modulo the range's size, wider ranges big-endian, `char` as a little-endian u32).
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, 'seeds', target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode('utf-8')
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


# ---------------------------------------------------------------- frame
FRAMES = {
    # every type, accepted
    'find_plain': '{"type":"find"}',
    'find_interests': '{"type":"find","interests":["Music","  Rust   Lang ","music"]}',
    'find_null': '{"type":"find","interests":null}',
    'find_empty': '{"type":"find","interests":[]}',
    'find_ten_dups': '{"type":"find","interests":["A","a"," a","a ","A","a","a","a","a","a"]}',
    'find_exact32': '{"type":"find","interests":["' + 'é' * 32 + '"]}',
    'find_unicode_ws': '{"type":"find","interests":["\u00a0Straße\u3000CAFÉ\\n","ΟΔΟΣ","İstanbul"]}',
    'find_pow': '{"type":"find","interests":["go"],"pow":"2609"}',
    'msg': '{"type":"msg","text":"hello"}',
    'msg_html': '{"type":"msg","text":"  <b>hi</b> <script>alert(1)</script> "}',
    'msg_escapes': '{"type":"msg","text":"tab\\there \\"quoted\\" \\\\ back \\/ slash \\b\\f\\n\\r \\u00e9"}',
    'msg_astral': '{"type":"msg","text":"😀👍🏽🇫🇷 𝕏 \\ud83d\\ude00"}',
    'msg_combining': '{"type":"msg","text":"e\u0301 a\u0308\u0308\u0308 Z\u0351\u0352\u0353 \u200d\u200b"}',
    'msg_nul': '{"type":"msg","text":"\\u0000"}',
    'msg_2000': '{"type":"msg","text":"' + '😀' * 2000 + '"}',
    'typing_true': '{"type":"typing","active":true}',
    'typing_false': '{"type":"typing","active":false}',
    'skip': '{"type":"skip"}',
    'stop': '{"type":"stop","extra":[1,{"a":null}]}',
    'report': '{"type":"report","reason":"spam"}',
    'type_escaped': '{"\\u0074ype":"\\u0066ind"}',
    'unknown_fields': '{"x":1,"type":"skip","y":{"z":[true,false,null]},"x":2}',
    'whitespace_around': ' \n\t{ "type" : "stop" } \r\n',
    # refused
    'err_empty': '',
    'err_not_json': 'nope',
    'err_array': '[]',
    'err_string': '"find"',
    'err_number': '42',
    'err_null': 'null',
    'err_no_type': '{}',
    'err_type_number': '{"type":1}',
    'err_type_null': '{"type":null}',
    'err_unknown_type': '{"type":"dance"}',
    'err_type_case': '{"type":"FIND"}',
    'err_dup_type': '{"type":"find","type":"msg"}',
    'err_dup_text': '{"type":"msg","text":"a","text":"b"}',
    'err_trailing': '{"type":"find"} trailing',
    'err_two_objects': '{"type":"find"}{"type":"find"}',
    'err_unterminated': '{"type":"msg","text":"abc',
    'err_trailing_comma': '{"type":"find",}',
    'err_single_quotes': "{'type':'find'}",
    'err_bad_escape': '{"type":"msg","text":"\\x41"}',
    'err_short_unicode_escape': '{"type":"msg","text":"\\u12"}',
    'err_control_char': '{"type":"msg","text":"a\x01b"}',
    'err_msg_no_text': '{"type":"msg"}',
    'err_msg_text_null': '{"type":"msg","text":null}',
    'err_msg_text_number': '{"type":"msg","text":5}',
    'err_msg_text_array': '{"type":"msg","text":["hi"]}',
    'err_msg_empty': '{"type":"msg","text":""}',
    'err_msg_whitespace': '{"type":"msg","text":" \\n\\t\u3000\u00a0\u2028"}',
    'err_msg_2001': '{"type":"msg","text":"' + 'x' * 2001 + '"}',
    'err_typing_missing': '{"type":"typing"}',
    'err_typing_string': '{"type":"typing","active":"yes"}',
    'err_typing_number': '{"type":"typing","active":1}',
    'err_interests_string': '{"type":"find","interests":"music"}',
    'err_interests_number': '{"type":"find","interests":[1]}',
    'err_interests_blank': '{"type":"find","interests":["  "]}',
    'err_interests_33': '{"type":"find","interests":["' + 'x' * 33 + '"]}',
    'err_interests_11': '{"type":"find","interests":[' + ','.join(['"a"'] * 11) + ']}',
    'err_interests_object': '{"type":"find","interests":{"a":1}}',
    'err_interests_nested': '{"type":"find","interests":[["a"]]}',
    # lone surrogate escapes (and near misses)
    'lone_high': '{"type":"msg","text":"\\ud800"}',
    'lone_low': '{"type":"msg","text":"\\udc00"}',
    'lone_in_unknown': '{"type":"msg","text":"ok","junk":"\\udc00"}',
    'lone_high_then_char': '{"type":"msg","text":"a\\ud83db"}',
    'lone_in_key': '{"type":"stop","\\ud800":1}',
    'lone_reversed_pair': '{"type":"msg","text":"\\ude00\\ud83d"}',
    'lone_high_high_low': '{"type":"msg","text":"\\ud83d\\ud83d\\ude00"}',
    'escaped_backslash_u': '{"type":"msg","text":"\\\\ud800"}',
    'lone_in_interests': '{"type":"find","interests":["\\udfff"]}',
    # deep nesting
    'deep_unknown_200': '{"type":"stop","x":' + '[' * 200 + ']' * 200 + '}',
    'deep_unknown_5000': '{"type":"stop","x":' + '[' * 5000 + ']' * 5000 + '}',
    'deep_objects': '{"type":"skip","x":' + '{"a":' * 150 + '1' + '}' * 150 + '}',
    'deep_interests': '{"type":"find","interests":' + '[' * 300 + ']' * 300 + '}',
    'deep_top': '[' * 1000 + ']' * 1000,
    'deep_unclosed': '{"type":"stop","x":' + '[' * 3000,
    # huge numbers
    'huge_exp': '{"type":"stop","n":1e400}',
    'huge_int': '{"type":"skip","n":' + '9' * 500 + '}',
    'huge_neg': '{"type":"skip","n":-1e-400}',
    'huge_text_number': '{"type":"msg","text":1e999}',
    'huge_interest_number': '{"type":"find","interests":[123456789012345678901234567890]}',
    'huge_active': '{"type":"typing","active":1e400}',
    'bad_number': '{"type":"stop","n":01}',
    'bad_number2': '{"type":"stop","n":1.}',
    'bom': '\ufeff{"type":"stop"}',
}
for name, text in FRAMES.items():
    write('frame', name, text)
write('frame', 'invalid_utf8', b'{"type":"msg","text":"\xff\xfe"}')
write('frame', 'overlong_utf8', b'{"type":"msg","text":"\xc0\xaf"}')
write('frame', 'cesu_surrogate_utf8', b'{"type":"msg","text":"\xed\xa0\x80"}')

# ---------------------------------------------------------------- interests
# Decoder (fuzz_targets/interests.rs): count (0..=12), then per interest a length (0..=40) and
# per character a selector: 0 one of SPICE, 1 any char (4 bytes), 2/3 printable ASCII.
SPICE = [' ', '\t', '\n', '\r', '\x0b', '\x0c', '\x85', '\xa0', '\u1680', '\u2000', '\u2007',
         '\u200a', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\u200b', '\ufeff', '\u180e',
         'A', 'z', 'Σ', 'σ', 'ς', 'İ', 'ß', 'ẞ', 'Ω', 'K', '\u0301', '\u0307', '\u0345', 'ͅ',
         'Ⅻ', 'Ⓐ', '😀', '𐐀', '\U0001e900', '\0', '"', '\\']


def interest_bytes(words):
    out = [len(words)]
    for w in words:
        out.append(len(w))
        for c in w:
            if c in SPICE:
                out += [0, SPICE.index(c)]
            elif ' ' <= c <= '~':
                out += [2, ord(c) - 32]
            else:
                out += [1] + list(ord(c).to_bytes(4, 'little'))
    return bytes(out)


INTERESTS = {
    'plain': ['music', 'go'],
    'case_and_spaces': ['  Rust   Lang ', 'rust lang', 'RUST\u3000LANG', 'MUSIC'],
    'final_sigma': ['ΟΔΟΣ', 'ΣΑΣ ΣΑΣ', 'σ'],
    'longer_lower_case': ['İstanbul', 'İ' * 17, 'ẞ'],
    'combining_and_astral': ['e\u0301', '😀 😀', '𐐀𐐀', '\U0001e900'],
    'zero_width_not_space': ['\u200b', '\ufeff', '\u180e a'],
    'blank': ['   '],
    'exactly_32': ['x' * 32, 'é' * 32],
    'over_32': ['x' * 33],
    'eleven': ['a'] * 11,
    'ten_duplicates': ['A', 'a', ' a', 'a ', '\u00a0A', 'a', 'a', 'a', 'a', 'a'],
    'none': [],
    'quotes_and_backslash': ['"quoted"', 'back\\slash', '\0nul'],
}
for name, words in INTERESTS.items():
    write('interests', name, interest_bytes(words))

# ---------------------------------------------------------------- sequence
# Decoder (fuzz_targets/sequence.rs): per step a slot (0..=4) and an op (0..=15: 0-9 frame,
# 10 close, 11 reopen, 12-13 advance by 0..=12000 ms (2 bytes), 14-15 tick); a frame is a kind
# (0..=9) and its payload.


def frame(slot, kind, *payload):
    return [slot, 0, kind, *payload]


def find(slot, tags=None):
    if tags is None:
        return frame(slot, 0, 0, 0)  # {"type":"find"}
    return frame(slot, 0, 6, len(tags), *tags, 1)  # with interests (TAGS indices)


def find_bad(slot, variant):  # 1 "music", 2 blank, 3 33 chars, 4 eleven, 5 [1]
    return frame(slot, 0, variant, 1)


def msg(slot, variant=6):  # 6 ok, 0 blank, 1 2001 chars, 2 2000 astral, 3 number, 4 null
    return frame(slot, 2, variant)


def typing(slot, active=True):
    return frame(slot, 4, 2 if active else 3)


def typing_bad(slot):
    return frame(slot, 4, 0)


def skip(slot):
    return frame(slot, 5)


def stop(slot):
    return frame(slot, 7)


def close(slot):
    return [slot, 10]


def reopen(slot):
    return [slot, 11]


def advance(ms):
    return [0, 12, ms >> 8, ms & 255]


def tick():
    return [0, 14]


MUSIC, MUSIC_UP, MUSIC_WS, GO, GO_UP, CHESS, ROCK, ROCK_UP, SOFIA = range(9)
SEQUENCES = {
    'pair_chat_skip_rematch': [
        find(0), find(1), msg(0), typing(1), typing(1, False), msg(1, 2), msg(0, 1), msg(0, 0),
        msg(0, 3), typing_bad(1), skip(0), tick(), find(1), tick(), advance(9999), tick(),
        advance(1), tick(), msg(1), stop(1), stop(0)],
    'interests_then_anyone': [
        find(0, [MUSIC]), find(1, [GO]), find(2), tick(), find(3, [MUSIC_WS, ROCK]),
        advance(4999), tick(), advance(1), tick(), find(4, [ROCK_UP]), skip(2), advance(5000),
        tick()],
    'shared_interest_beats_longer_wait': [
        find(0), find(1, [CHESS]), find(2, [GO, MUSIC]), find(3, [MUSIC_UP, GO_UP]),
        find(4, [SOFIA, CHESS]), msg(3), msg(4)],
    'cooldown_blocks_then_ends': [
        find(0), find(1), skip(1), find(0), advance(3000), tick(), find(2), skip(2),
        advance(7000), tick(), advance(10000), tick()],
    'close_mid_chat': [
        find(0), find(1), close(0), msg(1), find(1), reopen(0), find(0), close(1), close(1),
        reopen(1), find(1, [MUSIC]), close(1), tick()],
    'rate_limit_and_strikes': [skip(0)] * 8 + [find_bad(0, v) for v in (1, 2, 3, 4, 5)] * 5
    + [find(0), msg(0)],
    'chat_burst': [find(0), find(1)] + [msg(0)] * 25 + [advance(1000)] + [typing(0)] * 6,
    'bad_fields_each_state': [
        msg(0, 0), typing_bad(0), find_bad(0, 2), find(0, [MUSIC]), find(0), find_bad(0, 3),
        find(1, [MUSIC]), msg(0, 1), msg(0, 3), msg(0, 4), typing_bad(0), stop(0), stop(0),
        skip(1), skip(1)],
    'skip_while_waiting_fresh_wait': [
        find(0, [CHESS]), find(1, [GO]), advance(4000), skip(0), advance(1000), tick(),
        find(2, [CHESS, GO]), advance(4000), tick(), find(3), tick()],
    'everyone_everything': [find(s) for s in range(5)] + [skip(s) for s in range(5)]
    + [tick(), advance(10000), tick()] + [stop(s) for s in range(5)]
    + [find(s, [s % 3]) for s in range(5)] + [advance(5000), tick()]
    + [close(s) for s in range(5)] + [reopen(s) for s in range(5)],
}
for name, steps in SEQUENCES.items():
    write('sequence', name, bytes(b for step in steps for b in step))

print('seeds written:', {t: len(os.listdir(os.path.join(HERE, 'seeds', t)))
                         for t in ('frame', 'interests', 'sequence')})
