-- refresh_open: this node still holds these counts of open connections: each key's field for
-- this node is set to its count (0 removes it) and the key's TTL renewed; fields of nodes no
-- longer live are removed on the way.
-- KEYS[1] the crowd's live nodes, KEYS[2..] open:<key> hashes. ARGV[1] now, ARGV[2] node
-- timeout ms, ARGV[3] this node's id, ARGV[4] TTL ms, ARGV[5..] the counts, one per KEYS[2..].
-- Reply: 1.
local K_NODES = KEYS[1]
local now, timeout, me, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
for i = 2, #KEYS do
  local key, count = KEYS[i], tonumber(ARGV[i + 3])
  live_open(key, K_NODES, me, now - timeout)
  if count > 0 then
    redis.call('HSET', key, me, count)
    expire_in(key, ttl)
  else
    redis.call('HDEL', key, me)
  end
end
return 1
