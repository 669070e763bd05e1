-- stop and close: leave the queue, or end a room (with a cooldown for stop).
-- ARGV[5] me, ARGV[6] me's waiting seq ('0' when not waiting), ARGV[7] cooldown partner
-- ('' for none), ARGV[8] cooldown end (ms), ARGV[9] cooldown key PX (ms), ARGV[10] '1' when a
-- room ended by a pairing another node made (marker) gets a cooldown too (stop), '0' (close).
-- Reply status: 'left'; when me had been paired by another node: 'taken' with its marker.
local me, cur_seq = ARGV[5], ARGV[6]
local cool_with, cool_until, cool_px, cool_taken = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local t = taken(me, cur_seq)
if t then
  if cool_taken == '1' then cool(me, t[1], cool_until, cool_px) end
  return reply('taken', cur_seq, t[1], t[2], t[3])
end
if cur_seq ~= '0' and redis.call('HGET', skey(me), 'q') == cur_seq then unqueue(me) end
if cool_with ~= '' then cool(me, cool_with, cool_until, cool_px) end
return reply('left')
