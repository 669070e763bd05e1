-- ban_left: the longest ban in force under any of the keys (K_e's and K_(e-1)'s).
-- KEYS: ban:<key> hashes. ARGV[1] now.
-- Reply: the time left (ms) of the longest ban in force, or -1 when none is.
local now = tonumber(ARGV[1])
local best = -1
for _, key in ipairs(KEYS) do
  local ends = redis.call('HGET', key, 'ends')
  if ends then
    local left = tonumber(ends) - now
    if left > 0 and left > best then best = left end
  end
end
return best
