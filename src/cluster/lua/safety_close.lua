-- close: a connection counted by `open` on this node closed.
-- KEYS[1] open:<key>. ARGV[1] this node's id, ARGV[2] TTL ms. Reply: 1.
local K, me, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('HINCRBY', K, me, -1) <= 0 then redis.call('HDEL', K, me) end
if redis.call('EXISTS', K) == 1 then expire_in(K, ttl) end
return 1
