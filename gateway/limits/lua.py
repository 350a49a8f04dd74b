"""The Redis side of per-key limits: one atomic Lua script admits and settles requests.

It mirrors routing/quota.py rule for rule (same bucket refill, same all-or-nothing
admission), so a key is limited alike whether Redis or the in-process fallback answers.
Time comes from Redis (`TIME`), not from the replicas, so clock skew between replicas
cannot stretch a bucket.

One call carries a batch of one key's admissions and settlements (gateway/limits/redis_batch.py),
run in order, each exactly as if it had been sent alone at the same instant: the key's
buckets and budget are read once, updated in Lua for each item, and written back once, so
a batch of N costs about one item's Redis commands plus N small steps.

Keys, all under one hash tag so a Redis Cluster keeps them on one slot:
  {prefix:key}:rpm   hash level, ts        requests bucket
  {prefix:key}:tpm   hash level, ts        tokens bucket
  {prefix:key}:conc  zset lease -> expiry  concurrent requests
  {prefix:key}:budget:YYYY-MM  hash spent, reserved (integer nano-USD)
  {prefix:key}:resv:YYYY-MM    zset "lease:nano" -> deadline (ms): the reservations that
                               make up `reserved`, each dropped from it once its deadline
                               passes, so a crashed replica's reservations free themselves
"""

from __future__ import annotations

from routing.quota import BUDGET, CONCURRENCY, RPM, TPM, Verdict

# The `refused` codes of an admission's answer.
REFUSED_CODES = {1: RPM, 2: TPM, 3: CONCURRENCY, 4: BUDGET}


def limit_keys(prefix: str, key_name: str, month: str) -> tuple[str, ...]:
    """The Redis keys of one API key's limits, in the order the batch script reads them."""
    tag = f"{{{prefix}:lim:{key_name}}}"
    return (
        f"{tag}:rpm",
        f"{tag}:tpm",
        f"{tag}:conc",
        f"{tag}:budget:{month}",
        f"{tag}:resv:{month}",
    )


# Items (ARGV), comma-separated:
#   A,rpm,tpm,tokens,max_conc,lease,lease_ttl_ms,budget_nano,reserve_nano,budget_ttl_s
#   S,tpm,reserved_tokens,used_tokens,lease,reserve_nano,cost_nano,budget_on,reservation
#   (0 / -1 = that check is off; an empty lease = no concurrency lease). lease_ttl_ms is
#   also the reservation's lifetime; `reservation` is the lease id the admission used.
# Answers, one per item, comma-separated integers. Admit: allowed, refused (0 none, 1 rpm,
# 2 tpm, 3 concurrency, 4 budget, 5 budget not seeded yet), retry_ms, remaining_requests,
# reset_requests_ms, remaining_tokens, reset_tokens_ms, budget_left_nano, spent_nano
# (-1 = not applicable). Settle: "1".
BATCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function split(s)
  local out, i = {}, 3
  while true do
    local j = string.find(s, ',', i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end

-- A token bucket, read (and refilled to now) on first use, written back once at the end.
local buckets = {}
local function bucket(key, cap)
  local b = buckets[key]
  if b == nil then
    local level = cap
    local h = redis.call('HMGET', key, 'level', 'ts')
    if h[1] then
      level = tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * cap / 60000
    end
    b = {level = level, dirty = false}
    buckets[key] = b
  end
  if b.level > cap then b.level = cap end
  -- Never more than one refill in debt (routing/quota.py floor).
  if b.level < -cap then b.level = -cap end
  return b
end
local function floor_level(level, cap)
  if level < -cap then return -cap end
  return level
end
local function reset(level, cap)
  return math.max(0, math.ceil((cap - level) * 60000 / cap))
end

-- Live leases: expired ones dropped once, then counted as items add and remove them.
local leases = nil
local lease_ttl = 0
local function live_leases()
  if leases == nil then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    leases = redis.call('ZCARD', KEYS[3])
  end
  return leases
end

-- Reservations past their deadline, dropped from the set; returns the nano-USD they held.
-- Bounded per call so one batch never does unbounded work; the rest go next time.
local function expired_reservations()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 256)
  local freed = 0
  for _, member in ipairs(gone) do
    local colon = string.find(member, ':[^:]*$')
    freed = freed + (tonumber(string.sub(member, colon + 1)) or 0)
  end
  if #gone > 0 then redis.call('ZREM', KEYS[5], unpack(gone)) end
  return freed
end

-- The month's budget: spent and reserved as read, plus what this batch changes.
local budget = nil
local function month_budget()
  if budget == nil then
    local h = redis.call('HMGET', KEYS[4], 'spent', 'reserved')
    if h[1] then
      budget = {seeded = true, spent = tonumber(h[1]), reserved = tonumber(h[2] or '0'),
                d_spent = 0, d_reserved = 0, ttl = 0, resv_ttl = 0}
      local freed = math.min(expired_reservations(), budget.reserved)
      budget.reserved = budget.reserved - freed
      budget.d_reserved = -freed
    else
      budget = {seeded = false, spent = 0, reserved = 0, d_spent = 0, d_reserved = 0, ttl = 0,
                resv_ttl = 0}
    end
  end
  return budget
end

local function admit(a)
  local rpm, tpm, tokens = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
  local maxc, cap_nano, reserve = tonumber(a[4]), tonumber(a[7]), tonumber(a[8])
  local rb, tb, b
  if rpm > 0 then
    rb = bucket(KEYS[1], rpm)
    if rb.level < 1 then
      return {0, 1, math.ceil((1 - rb.level) * 60000 / rpm), 0, reset(rb.level, rpm),
              -1, -1, -1, -1}
    end
  end
  if tpm > 0 then
    tb = bucket(KEYS[2], tpm)
    local need = math.min(tokens, tpm)
    if tb.level < need then
      return {0, 2, math.ceil((need - tb.level) * 60000 / tpm), -1, -1,
              math.max(0, math.floor(tb.level)), reset(tb.level, tpm), -1, -1}
    end
  end
  if maxc > 0 and live_leases() >= maxc then
    return {0, 3, 1000, -1, -1, -1, -1, -1, -1}
  end
  if cap_nano >= 0 then
    b = month_budget()
    if not b.seeded then return {0, 5, 0, -1, -1, -1, -1, -1, -1} end
    if b.spent + b.reserved + reserve > cap_nano then
      return {0, 4, 0, -1, -1, -1, -1, math.max(0, cap_nano - b.spent - b.reserved), b.spent}
    end
  end
  local out = {1, 0, 0, -1, -1, -1, -1, -1, -1}
  if rb then
    rb.level = rb.level - 1
    rb.dirty = true
    out[4] = math.max(0, math.floor(rb.level))
    out[5] = reset(rb.level, rpm)
  end
  if tb then
    tb.level = floor_level(tb.level - tokens, tpm)
    tb.dirty = true
    out[6] = math.max(0, math.floor(tb.level))
    out[7] = reset(tb.level, tpm)
  end
  if maxc > 0 then
    local ttl = tonumber(a[6])
    redis.call('ZADD', KEYS[3], now + ttl, a[5])
    leases = leases + 1
    if ttl > lease_ttl then lease_ttl = ttl end
  end
  if b then
    local ttl = tonumber(a[6])
    if reserve > 0 then
      redis.call('ZADD', KEYS[5], now + ttl, a[5] .. ':' .. a[8])
      if ttl > b.resv_ttl then b.resv_ttl = ttl end
    end
    b.reserved = b.reserved + reserve
    b.d_reserved = b.d_reserved + reserve
    b.ttl = tonumber(a[9])
    out[8] = math.max(0, cap_nano - b.spent - b.reserved)
    out[9] = b.spent
  end
  return out
end

local function settle(a)
  local tpm = tonumber(a[1])
  local delta = tonumber(a[3]) - tonumber(a[2])
  if tpm > 0 and delta ~= 0 then
    local tb = bucket(KEYS[2], tpm)
    tb.level = floor_level(tb.level - delta, tpm)
    tb.dirty = true
  end
  if a[4] ~= '' then
    local gone = redis.call('ZREM', KEYS[3], a[4])
    if leases ~= nil then leases = leases - gone end
  end
  if a[7] == '1' then
    local b = month_budget()
    -- Only a reservation still held is given back: one that expired was given back then.
    local held = 0
    if tonumber(a[5]) > 0 then
      held = redis.call('ZREM', KEYS[5], a[8] .. ':' .. a[5])
    end
    local give_back = math.min(held * tonumber(a[5]), b.reserved)
    b.reserved = b.reserved - give_back
    b.d_reserved = b.d_reserved - give_back
    b.spent = b.spent + tonumber(a[6])
    b.d_spent = b.d_spent + tonumber(a[6])
  end
  return 1
end

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

for key, b in pairs(buckets) do
  if b.dirty then
    redis.call('HSET', key, 'level', tostring(b.level), 'ts', now)
    redis.call('PEXPIRE', key, 120000)
  end
end
if lease_ttl > 0 then redis.call('PEXPIRE', KEYS[3], lease_ttl + 60000) end
if budget ~= nil then
  -- Increments, not the Lua doubles: the stored integers stay exact at any size.
  if budget.d_reserved ~= 0 then
    local reserved = redis.call('HINCRBY', KEYS[4], 'reserved', budget.d_reserved)
    if reserved < 0 then redis.call('HSET', KEYS[4], 'reserved', 0) end
  end
  if budget.d_spent ~= 0 then redis.call('HINCRBY', KEYS[4], 'spent', budget.d_spent) end
  if budget.ttl > 0 then redis.call('EXPIRE', KEYS[4], budget.ttl) end
  if budget.resv_ttl > 0 then redis.call('PEXPIRE', KEYS[5], budget.resv_ttl + 60000) end
end
return out
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

# Background repair (gateway/limits/reconcile.py), never on a request's path: drops expired
# reservations, sets `reserved` to the sum of those still held (legacy or drifted counters
# heal), and adds ARGV[1] nano-USD to `spent` when ARGV[1] is not 0. Returns the new
# spent and reserved, or nil when the month is not seeded.
REPAIR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local colon = string.find(member, ':[^:]*$')
  held = held + (tonumber(string.sub(member, colon + 1)) or 0)
end
redis.call('HSET', KEYS[1], 'reserved', string.format('%d', held))
local delta = tonumber(ARGV[1])
if delta ~= 0 then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1]) end
return {redis.call('HGET', KEYS[1], 'spent'), string.format('%d', held)}
"""

# The reconciliation lock: taken when free, kept by its holder (ARGV[1]) for ARGV[2] ms more.
LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""


def batch_item(op: str, args: list[str | int]) -> str:
    return op + "," + ",".join(map(str, args))


def verdict_of(out: bytes) -> Verdict:
    """An admission's answer from the batch script (its format is described above BATCH)."""
    values = [int(v) for v in out.split(b",")]

    def opt(v: int) -> int | None:
        return None if v < 0 else v

    return Verdict(
        allowed=values[0] == 1,
        refused_by=REFUSED_CODES.get(values[1]),
        retry_after_ms=values[2],
        remaining_requests=opt(values[3]),
        reset_requests_ms=opt(values[4]),
        remaining_tokens=opt(values[5]),
        reset_tokens_ms=opt(values[6]),
        budget_left_nano=opt(values[7]),
        spent_nano=opt(values[8]),
    )
