-- report: steps 2-4 of PROTOCOL.md "Report", as crate::safety::Safety::report.
-- KEYS[1] strikes:<target> (sorted set: reporter -> time), KEYS[2] strikequota:<reporter>
-- (sorted set: target -> time), KEYS[3] ban:<target> (hash: ends, starts), KEYS[4]
-- pairblock:<lo>:<hi> (string: the block's end).
-- ARGV[1] now, ARGV[2] reporter, ARGV[3] target, ARGV[4] '1' when the target sent a msg,
-- ARGV[5] pair block ms, ARGV[6] strike window ms, ARGV[7] reporter max strikes, ARGV[8] ban
-- strikes, ARGV[9] ban ms, ARGV[10] ban max ms, ARGV[11] bans remembered, ARGV[12] grace ms.
-- Reply: {why, ban}: why '' when the strike counted, else 'no_message', 'same_address',
-- 'repeat' or 'reporter_quota'; ban: the length (ms) of the ban this report imposed, or -1.
local K_STRIKES, K_QUOTA, K_BAN, K_PAIR = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local reporter, target, sent = ARGV[2], ARGV[3], ARGV[4] == '1'
local pair_ms, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local quota_max, ban_strikes = tonumber(ARGV[7]), tonumber(ARGV[8])
local ban_ms, ban_max, history = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local grace = tonumber(ARGV[12])

-- 2. The pair block, renewed by every report of the pair.
if pair_ms > 0 then
  redis.call('SET', K_PAIR, int(now + pair_ms), 'PX', int(pair_ms))
else
  redis.call('DEL', K_PAIR)
end

-- 3. The strike, in the protocol's order of reasons.
if not sent then return {'no_message', -1} end
if reporter == target then return {'same_address', -1} end
local cutoff = int(now - window)
redis.call('ZREMRANGEBYSCORE', K_QUOTA, '-inf', cutoff)
redis.call('ZREMRANGEBYSCORE', K_STRIKES, '-inf', cutoff)
local why = ''
if redis.call('ZSCORE', K_QUOTA, target) or redis.call('ZSCORE', K_STRIKES, reporter) then
  why = 'repeat'
elseif redis.call('ZCARD', K_QUOTA) >= quota_max then
  why = 'reporter_quota'
end

-- 4. The ban at BAN_STRIKES: BAN_SECS * 2^(n-1), at most BAN_MAX_SECS, n the bans started
-- within the last BAN_MAX_SECS, this one included (SafetySettings::ban_length).
local function impose_ban()
  local starts = {}
  for s in string.gmatch(redis.call('HGET', K_BAN, 'starts') or '', '%S+') do
    local t = tonumber(s)
    if now - t < ban_max then starts[#starts + 1] = t end
  end
  starts[#starts + 1] = now
  while #starts > history do table.remove(starts, 1) end
  local length = ban_max
  if #starts - 1 < 32 then length = math.min(ban_ms * 2 ^ (#starts - 1), ban_max) end
  local ends = math.max(tonumber(redis.call('HGET', K_BAN, 'ends') or '0'), now + length)
  if ban_max > 0 then
    local parts = {}
    for i, t in ipairs(starts) do parts[i] = int(t) end
    redis.call('HSET', K_BAN, 'ends', int(ends), 'starts', table.concat(parts, ' '))
    redis.call('PEXPIRE', K_BAN, int(ban_max))
  else
    redis.call('DEL', K_BAN)
  end
  return length
end

local ban = -1
if why == '' then
  redis.call('ZADD', K_QUOTA, int(now), target)
  redis.call('ZADD', K_STRIKES, int(now), reporter)
  if redis.call('ZCARD', K_STRIKES) >= ban_strikes then
    redis.call('DEL', K_STRIKES)
    ban = impose_ban()
  end
end
expire_after_latest(K_QUOTA, now, window, grace)
expire_after_latest(K_STRIKES, now, window, grace)
return {why, ban}
