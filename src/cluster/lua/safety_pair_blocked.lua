-- pair_blocked: whether any of the pair-block keys (every combination of the two sides'
-- keys, each ordered) holds a block that ends after now.
-- KEYS: pairblock:<lo>:<hi> strings (their value: the block's end, ms). ARGV[1] now.
-- Reply: 1 when blocked, else 0.
local now = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local ends = redis.call('GET', key)
  if ends and tonumber(ends) > now then return 1 end
end
return 0
