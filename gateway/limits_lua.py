"""The Redis side of per-key limits: one Lua script to admit, one to settle, each atomic.

They mirror routing/quota.py rule for rule (same bucket refill, same all-or-nothing
admission), so a key is limited alike whether Redis or the in-process fallback answers.
Time comes from Redis (`TIME`), not from the replicas, so clock skew between replicas
cannot stretch a bucket.

Keys, all under one hash tag so a Redis Cluster keeps them on one slot:
  {prefix:key}:rpm   hash level, ts        requests bucket
  {prefix:key}:tpm   hash level, ts        tokens bucket
  {prefix:key}:conc  zset lease -> expiry  concurrent requests
  {prefix:key}:budget:YYYY-MM  hash spent, reserved (integer nano-USD)
"""

from __future__ import annotations

# ARGV: rpm tpm tokens max_conc lease lease_ttl_ms budget_nano reserve_nano budget_ttl_s
#       (0 / -1 = that check is off)
# Returns {allowed, refused(0 none,1 rpm,2 tpm,3 conc,4 budget,5 budget unseeded), retry_ms,
#          rem_req, reset_req_ms, rem_tok, reset_tok_ms, budget_left_nano, spent_nano}
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local maxc = tonumber(ARGV[4])
local budget = tonumber(ARGV[7])
local reserve = tonumber(ARGV[8])

local function refill(key, cap)
  local h = redis.call('HMGET', key, 'level', 'ts')
  if not h[1] then return cap end
  local level = tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * cap / 60000
  if level > cap then level = cap end
  return level
end
local function reset(level, cap)
  return math.max(0, math.ceil((cap - level) * 60000 / cap))
end

local rlevel, tlevel = -1, -1
if rpm > 0 then
  rlevel = refill(KEYS[1], rpm)
  if rlevel < 1 then
    return {0, 1, math.ceil((1 - rlevel) * 60000 / rpm), 0, reset(rlevel, rpm), -1, -1, -1, -1}
  end
end
if tpm > 0 then
  tlevel = refill(KEYS[2], tpm)
  local need = math.min(tokens, tpm)
  if tlevel < need then
    return {0, 2, math.ceil((need - tlevel) * 60000 / tpm), -1, -1,
            math.max(0, math.floor(tlevel)), reset(tlevel, tpm), -1, -1}
  end
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then
    return {0, 3, 1000, -1, -1, -1, -1, -1, -1}
  end
end
local spent, reserved = 0, 0
if budget >= 0 then
  local b = redis.call('HMGET', KEYS[4], 'spent', 'reserved')
  if not b[1] then return {0, 5, 0, -1, -1, -1, -1, -1, -1} end
  spent = tonumber(b[1])
  reserved = tonumber(b[2] or '0')
  if spent + reserved + reserve > budget then
    return {0, 4, 0, -1, -1, -1, -1, math.max(0, budget - spent - reserved), spent}
  end
end

local out = {1, 0, 0, -1, -1, -1, -1, -1, -1}
if rpm > 0 then
  rlevel = rlevel - 1
  redis.call('HSET', KEYS[1], 'level', tostring(rlevel), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], 120000)
  out[4] = math.max(0, math.floor(rlevel))
  out[5] = reset(rlevel, rpm)
end
if tpm > 0 then
  tlevel = tlevel - tokens
  redis.call('HSET', KEYS[2], 'level', tostring(tlevel), 'ts', now)
  redis.call('PEXPIRE', KEYS[2], 120000)
  out[6] = math.max(0, math.floor(tlevel))
  out[7] = reset(tlevel, tpm)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]) + 60000)
end
if budget >= 0 then
  reserved = redis.call('HINCRBY', KEYS[4], 'reserved', reserve)
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[9]))
  out[8] = math.max(0, budget - spent - reserved)
  out[9] = spent
end
return out
"""

# ARGV: tpm reserved_tokens used_tokens lease reserve_nano cost_nano budget_on
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm = tonumber(ARGV[1])
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
if tpm > 0 and delta ~= 0 then
  local h = redis.call('HMGET', KEYS[2], 'level', 'ts')
  local level = tpm
  if h[1] then
    level = tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * tpm / 60000
    if level > tpm then level = tpm end
  end
  redis.call('HSET', KEYS[2], 'level', tostring(level - delta), 'ts', now)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[3], ARGV[4]) end
if ARGV[7] == '1' then
  local reserved = redis.call('HINCRBY', KEYS[4], 'reserved', -tonumber(ARGV[5]))
  if reserved < 0 then redis.call('HSET', KEYS[4], 'reserved', 0) end
  redis.call('HINCRBY', KEYS[4], 'spent', tonumber(ARGV[6]))
end
return 1
"""

# Seeds a month's spend from the ledger unless another replica did first.
SEED = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'reserved', 0)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# Adds spend that was settled while Redis was away (the fallback counted it locally).
ADD_SPEND = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[1]))
end
return 1
"""


def _function(name: str, body: str) -> str:
    # ARGV inside the body is the function's own parameter, shadowing the script's.
    return f"local function {name}(ARGV)\n{body}\nend\n"


# Many admissions and settlements of one key in one call (gateway/redis_batch.py): each
# ARGV item is "A,<admit args>" or "S,<settle args>", comma-separated, run in order, each
# exactly as the scripts above; each answer is a comma-separated string (settle: "1").
BATCH = (
    """
local function split(s)
  local t, i = {}, 3
  while true do
    local j = string.find(s, ',', i, true)
    if not j then t[#t + 1] = string.sub(s, i); return t end
    t[#t + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
"""
    + _function("admit", ADMIT)
    + _function("settle", SETTLE)
    + """
local out = {}
for i = 1, #ARGV do
  local item = ARGV[i]
  if string.sub(item, 1, 1) == 'A' then
    local r = admit(split(item))
    for k = 1, #r do r[k] = string.format('%d', r[k]) end
    out[i] = table.concat(r, ',')
  else
    out[i] = tostring(settle(split(item)))
  end
end
return out
"""
)
