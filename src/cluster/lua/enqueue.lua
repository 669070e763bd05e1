-- find and skip: leave (skip), enter the queue at its back, then try to pair.
-- ARGV[5] me, ARGV[6] me's current waiting seq ('0' when not waiting), ARGV[7] room id for a
-- pairing made now, ARGV[8] open_at (ms; '0' without interests), ARGV[9] cooldown partner
-- ('' for none: find, or skip while waiting), ARGV[10] cooldown end (ms), ARGV[11] cooldown
-- key PX (ms), ARGV[12] me's address keys for pair blocks (space-separated, may be ''),
-- ARGV[13..] interest hashes.
-- Reply: {status, seq, truncated, partner, room, common..., '|', ended...}. Status 'dead'
-- (this node's heartbeat key is gone: nothing done, no '|' part), 'waiting' or 'paired'.
-- `ended` is {partner, room, common...} when me, believed waiting, had been paired by another
-- node (marker): that room ends here like a skipped one (with a cooldown).
local me, cur_seq, room, open_at = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local cool_with, cool_until, cool_px = ARGV[9], ARGV[10], ARGV[11]
if not alive(me) then return reply('dead') end
promote()
-- A pairing another node made while me waited: me was chatting, so this is a skip of that room.
local left = nil
local t = taken(me, cur_seq)
if t then
  left = t
  cool_with = t[1]
elseif cur_seq ~= '0' then
  unqueue(me)
end
if cool_with ~= '' then cool(me, cool_with, cool_until, cool_px) end
local ints = {}
for i = 13, #ARGV do ints[#ints + 1] = ARGV[i] end
local seq = redis.call('INCR', K_SEQ)
redis.call('PEXPIRE', K_SEQ, TTL)
redis.call('HSET', skey(me), 'q', seq, 'i', table.concat(ints, ' '), 'k', ARGV[12])
redis.call('PEXPIRE', skey(me), TTL)
if #ints == 0 then
  redis.call('ZADD', K_OPEN, seq, me)
  redis.call('PEXPIRE', K_OPEN, TTL)
else
  for _, h in ipairs(ints) do
    redis.call('ZADD', ikey(h), seq, me)
    redis.call('PEXPIRE', ikey(h), TTL)
  end
  redis.call('ZADD', K_OPENING, open_at, me)
  redis.call('PEXPIRE', K_OPENING, TTL)
end
local p = try_pair(me, room)
local r
if p then r = reply('paired', seq, p[1], room, p[2], p[3]) else r = reply('waiting', seq) end
r[#r + 1] = '|'
if left then
  r[#r + 1] = left[1]
  r[#r + 1] = left[2]
  for _, h in ipairs(left[3]) do r[#r + 1] = h end
end
return r
