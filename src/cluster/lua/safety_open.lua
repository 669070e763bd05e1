-- open: a connection of an address opens on this node, unless the address already holds MAX
-- open connections on the live nodes together (MAX_CONNS_PER_IP crowd-wide).
-- KEYS[1] open:<key> (hash: node id -> count), KEYS[2] the crowd's live nodes (sorted set:
-- node id -> last beat, ms).
-- ARGV[1] now, ARGV[2] node timeout ms, ARGV[3] this node's id, ARGV[4] max (0: no limit),
-- ARGV[5] TTL ms. Reply: 1 when counted, 0 when refused (nothing counted).
local K, K_NODES = KEYS[1], KEYS[2]
local now, timeout, me = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local max, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local total = live_open(K, K_NODES, me, now - timeout)
if max > 0 and total >= max then return 0 end
redis.call('HINCRBY', K, me, 1)
expire_in(K, ttl)
return 1
