-- A waiting session's interest wait or one of its cooldowns ended: pair it if it now can be.
-- ARGV[5] me, ARGV[6] me's waiting seq, ARGV[7] room id for a pairing made now.
-- Reply status: 'dead', 'taken' (another node paired it: partner, room, common of the
-- marker), 'lost' (not in the queue, no marker), 'waiting' or 'paired'.
local me, cur_seq, room = ARGV[5], ARGV[6], ARGV[7]
local t = taken(me, cur_seq)
if t then return reply('taken', cur_seq, t[1], t[2], t[3], t[4]) end
if not alive(me) then return reply('dead') end
if redis.call('HGET', skey(me), 'q') ~= cur_seq then return reply('lost') end
promote()
local p = try_pair(me, room)
if p then return reply('paired', cur_seq, p[1], room, p[2], p[3]) end
return reply('waiting', cur_seq)
