-- Shared head of the safety scripts (src/cluster/safety_store.rs prepends it).
-- Every key a script touches is passed in KEYS; ARGV carries only hex address keys, a node id
-- (16 hex digits) and numbers. Times are integral milliseconds since the Unix epoch, compared
-- with the caller's `now`, so a script's answer never depends on Redis's clock; Redis's expiries
-- only collect what no rule can see any more.

-- An integral number as Redis should store it (never in exponent notation).
local function int(x) return string.format('%.0f', x) end

-- Gives `key` a TTL of `ms`, or deletes it when `ms` is not positive.
local function expire_in(key, ms)
  if ms > 0 then redis.call('PEXPIRE', key, int(ms)) else redis.call('DEL', key) end
end

-- A sorted set of times (score = ms) whose entry lives `life` ms after its latest time: TTL
-- the time left plus `grace` (clock differences between nodes), never above `life`.
local function expire_after_latest(key, now, life, grace)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return end
  local left = tonumber(last[2]) + life - now
  if left <= 0 then redis.call('DEL', key) return end
  expire_in(key, math.min(left + grace, life))
end

-- Connections held open for an address (hash `open:<key>`: node id -> count), counting only
-- `me` and the nodes whose last beat in the sorted set `nodes` is after `cutoff`; fields of
-- other nodes are removed on the way.
local function live_open(key, nodes, me, cutoff)
  local total = 0
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    local node, n = h[i], tonumber(h[i + 1])
    if node == me then
      total = total + n
    else
      local beat = redis.call('ZSCORE', nodes, node)
      if beat and tonumber(beat) > cutoff then
        total = total + n
      else
        redis.call('HDEL', key, node)
      end
    end
  end
  return total
end
