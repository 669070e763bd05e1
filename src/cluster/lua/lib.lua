-- Shared head of every matching script (src/cluster/matching.rs prepends it).
-- KEYS[1] is the sequence key: it names the one hash slot that every key below shares.
-- ARGV[1] base (REDIS_PREFIX .. '{m}:'), ARGV[2] now (ms), ARGV[3] scan limit,
-- ARGV[4] key TTL (ms); the rest belongs to the script.
local B = ARGV[1]
local NOW = tonumber(ARGV[2])
local LIMIT = tonumber(ARGV[3])
local TTL = tonumber(ARGV[4])
local K_SEQ = KEYS[1]
local K_OPEN = B .. 'q:open'
local K_OPENING = B .. 'q:opening'
-- The safety tables' prefix (REDIS_PREFIX): B without its '{m}:'.
local P = string.sub(B, 1, #B - 4)

local function skey(addr) return B .. 's:' .. addr end
local function tkey(addr) return B .. 't:' .. addr end
local function ikey(h) return B .. 'q:i:' .. h end
local function nkey(node) return B .. 'n:' .. node end
local function node_of(addr) return string.sub(addr, 1, 16) end
local function ckey(a, b)
  if a < b then return B .. 'c:' .. a .. ':' .. b end
  return B .. 'c:' .. b .. ':' .. a
end

local function split(s)
  local t = {}
  if s then for w in string.gmatch(s, '%S+') do t[#t + 1] = w end end
  return t
end

local alive_cache = {}
local function alive(addr)
  local node = node_of(addr)
  local v = alive_cache[node]
  if v == nil then
    v = redis.call('EXISTS', nkey(node)) == 1
    alive_cache[node] = v
  end
  return v
end

local function cooling(a, b)
  local v = redis.call('GET', ckey(a, b))
  return v and tonumber(v) > NOW
end

-- Pair blocks of the safety extension (src/cluster/safety_store.rs writes them): the key names
-- the two address keys in order, its value is the block's end (ms). A session's hash holds its
-- address keys (current and previous epoch) in field 'k'. BLOCK_END: the earliest end of the
-- blocks that kept a candidate away in this run (the session is retried then), or nil.
local function pbkey(x, y)
  if x < y then return P .. 'pairblock:' .. x .. ':' .. y end
  return P .. 'pairblock:' .. y .. ':' .. x
end
local BLOCK_END = nil
local keys_cache = {}
local function keys_of(addr)
  local k = keys_cache[addr]
  if k == nil then
    k = split(redis.call('HGET', skey(addr), 'k'))
    keys_cache[addr] = k
  end
  return k
end
local function blocked(a, b)
  local ka = keys_of(a)
  if #ka == 0 then return false end
  local kb = keys_of(b)
  local found = false
  for _, x in ipairs(ka) do
    for _, y in ipairs(kb) do
      local v = tonumber(redis.call('GET', pbkey(x, y)) or '0')
      if v and v > NOW then
        found = true
        if BLOCK_END == nil or v < BLOCK_END then BLOCK_END = v end
      end
    end
  end
  return found
end

-- Takes a waiting session out of the queue: every set it is in, and its hash.
local function unqueue(addr)
  for _, h in ipairs(split(redis.call('HGET', skey(addr), 'i'))) do
    redis.call('ZREM', ikey(h), addr)
  end
  redis.call('ZREM', K_OPEN, addr)
  redis.call('ZREM', K_OPENING, addr)
  redis.call('DEL', skey(addr))
end

-- The interest waits that ended by NOW: those sessions join the open set (by their seq).
local function promote()
  local due = redis.call('ZRANGEBYSCORE', K_OPENING, '-inf', NOW, 'LIMIT', 0, LIMIT)
  for _, addr in ipairs(due) do
    redis.call('ZREM', K_OPENING, addr)
    local seq = redis.call('HGET', skey(addr), 'q')
    if seq then
      redis.call('ZADD', K_OPEN, seq, addr)
      redis.call('PEXPIRE', K_OPEN, TTL)
    end
  end
end

-- The longest-waiting eligible session of one set among its first LIMIT members: not `me`,
-- alive (its node's heartbeat key exists, its hash too; otherwise removed here), not cooling
-- with `me`. Sets TRUNCATED when LIMIT members were looked at without a find.
local TRUNCATED = false
local function first_eligible(set, me)
  local c = redis.call('ZRANGE', set, 0, LIMIT - 1, 'WITHSCORES')
  for i = 1, #c, 2 do
    local cand = c[i]
    if cand ~= me then
      if not alive(cand) or redis.call('EXISTS', skey(cand)) == 0 then
        unqueue(cand)
        redis.call('ZREM', set, cand)
      elseif not cooling(me, cand) and not blocked(me, cand) then
        return cand, tonumber(c[i + 1])
      end
    end
  end
  if #c >= 2 * LIMIT then TRUNCATED = true end
  return nil, nil
end

-- Matchmaker::try_pair: the longest-waiting eligible session sharing an interest, else (when
-- `me` is open) the longest-waiting eligible open one. On a pairing both leave the queue and,
-- when the partner is another node's, it gets a marker `t:` (partner, room, its seq, common).
-- Returns nil or {partner, common hashes (me's order), partner's address key ('' if none)}.
local function try_pair(me, room)
  local seq = redis.call('HGET', skey(me), 'q')
  if not seq then return nil end
  local mine = split(redis.call('HGET', skey(me), 'i'))
  local best, best_seq = nil, nil
  for _, h in ipairs(mine) do
    local cand, s = first_eligible(ikey(h), me)
    if cand and (best == nil or s < best_seq) then best, best_seq = cand, s end
  end
  if best == nil and redis.call('ZSCORE', K_OPEN, me) then
    best, best_seq = first_eligible(K_OPEN, me)
  end
  if best == nil then return nil end
  local theirs = {}
  for _, h in ipairs(split(redis.call('HGET', skey(best), 'i'))) do theirs[h] = true end
  local common = {}
  for _, h in ipairs(mine) do
    if theirs[h] then common[#common + 1] = h end
  end
  local their_seq = redis.call('HGET', skey(best), 'q')
  local their_key = keys_of(best)[1] or ''
  local my_key = keys_of(me)[1] or '-'
  unqueue(me)
  unqueue(best)
  if node_of(best) ~= node_of(me) then
    local marker = me .. ' ' .. room .. ' ' .. their_seq .. ' ' .. my_key
    for _, h in ipairs(common) do marker = marker .. ' ' .. h end
    redis.call('SET', tkey(best), marker, 'PX', TTL)
  end
  return {best, common, their_key}
end

-- The marker of a pairing made by another node for `me` while it waited with seq `seq`
-- (consumed here), or nil. Returns {partner, room, common hashes, partner's address key}.
local function taken(me, seq)
  if seq == '0' then return nil end
  local v = redis.call('GET', tkey(me))
  if not v then return nil end
  local f = split(v)
  if f[3] ~= seq then return nil end
  redis.call('DEL', tkey(me))
  local common = {}
  for i = 5, #f do common[#common + 1] = f[i] end
  local key = f[4]
  if key == '-' then key = '' end
  return {f[1], f[2], common, key}
end

-- Starts a cooldown between a and b that ends at `untl` (ms); the key outlives it by `px`.
local function cool(a, b, untl, px)
  redis.call('SET', ckey(a, b), untl, 'PX', px)
end

-- Reply: {status, seq, truncated, blocked until (ms, '0': none), partner, room, partner's
-- address key ('' if none), common...}
local function reply(status, seq, partner, room, common, key)
  local r = {status, seq or '0', TRUNCATED and '1' or '0', tostring(BLOCK_END or 0), partner or '', room or '', key or ''}
  for _, h in ipairs(common or {}) do r[#r + 1] = h end
  return r
end
