-- connection: an accepted connection of an address, crowd-wide (PROTOCOL.md "Proof of work"
-- and CONN_RATE_PER_MIN), as crate::safety::Safety::connection, with an optional rate check.
-- KEYS[1] conns:<key> (sorted set: unique member -> time), KEYS[2] strikes:<key>.
-- ARGV[1] now, ARGV[2] connection window ms (60 000), ARGV[3] count cap of the difficulty,
-- ARGV[4] connections allowed within the window (-1: no rate check), ARGV[5] strike window ms.
-- Reply: {1, n, strikes} when recorded: n its connections within the window, this one
-- included (at most the cap), strikes those it holds; {0, held, 0} when the rate refuses it
-- (nothing recorded).
local K, K_STRIKES = KEYS[1], KEYS[2]
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local pow_cap, limit, strike_window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', K, '-inf', int(now - window))
local held = redis.call('ZCARD', K)
if limit >= 0 and held >= limit then return {0, held, 0} end
local i, member = held, nil
repeat
  member = int(now) .. ':' .. i
  i = i + 1
until not redis.call('ZSCORE', K, member)
redis.call('ZADD', K, int(now), member)
local keep = math.max(pow_cap, limit)
local count = held + 1
if count > keep then
  redis.call('ZREMRANGEBYRANK', K, 0, count - keep - 1)
  count = keep
end
expire_in(K, window)
local strikes = redis.call('ZCOUNT', K_STRIKES, '(' .. int(now - strike_window), '+inf')
return {1, math.min(count, pow_cap), strikes}
