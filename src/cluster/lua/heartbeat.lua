-- The node is alive: its heartbeat key for the node timeout; the shared keys of the queue
-- keep their TTL while any node lives; the waiting sessions listed keep theirs.
-- ARGV[5] node id, ARGV[6] node timeout (ms), ARGV[7] mode, ARGV[8..] addresses of this
-- node's waiting sessions (may be none). The reply's list: those of them no longer queued
-- (another node paired them and its notice has not arrived, or their entry was lost).
-- Modes: 'beat': renew the key, but only if it still exists (reply 'missing' when it expired:
-- the crowd took the node for dead, and its sessions must not come back as they were);
-- 'first': create or renew it; 'purge': take the listed sessions out of the queue, no beat.
local node, timeout, mode = ARGV[5], ARGV[6], ARGV[7]
if mode == 'purge' then
  for i = 8, #ARGV do unqueue(ARGV[i]) end
  return reply('ok')
end
if mode == 'beat' and redis.call('EXISTS', nkey(node)) == 0 then return reply('missing') end
redis.call('SET', nkey(node), ARGV[2], 'PX', timeout)
redis.call('PEXPIRE', K_SEQ, TTL)
local gone = {}
if #ARGV >= 8 then
  redis.call('PEXPIRE', K_OPEN, TTL)
  redis.call('PEXPIRE', K_OPENING, TTL)
  for i = 8, #ARGV do
    local addr = ARGV[i]
    if redis.call('PEXPIRE', skey(addr), TTL) == 1 then
      for _, h in ipairs(split(redis.call('HGET', skey(addr), 'i'))) do
        redis.call('PEXPIRE', ikey(h), TTL)
      end
    else
      gone[#gone + 1] = addr
    end
  end
end
return reply('ok', nil, nil, nil, gone)
