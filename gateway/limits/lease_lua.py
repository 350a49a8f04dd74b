"""The Redis side of lease mode: one atomic Lua script grants, tops up and returns a
replica's slice of one key's limits (the slice arithmetic is routing/lease.py).

Same keys as exact mode (gateway/limits/lua.py, one hash tag, so one Redis Cluster slot), and
the same rules, so a key can be switched between modes and the reconciler keeps working:
- RPM/TPM: a slice takes tokens out of the bucket (refilled to now, Redis's clock) and a
  return puts unused ones back (never above capacity); a debt (tokens used beyond the
  reservation) is charged the same way. Nothing needs to expire: a crashed replica's
  tokens were taken, and the bucket refills as it always does.
- Concurrency: a slice of N slots is N entries `<holder>#1..N` in the lease set, with the
  slice's deadline, so exact-mode admissions count them and a crashed replica's expire.
- Budget: the slice is one reservation entry `<holder>:<nano>` in the month's reservation
  set with the slice's deadline, counted in `reserved`: exact-mode admissions, the
  reconciler's repair and the expiry of a crashed replica's entries all treat it as any
  reservation. A sync adds the spend settled since the last one to `spent` and replaces
  the entry by the new amount.
- Idempotent pushes: a sync names the month's cumulative spend its slice has pushed
  (`push_total`, this sync's `push_nano` included), and the month's budget hash records, per
  holder, the total applied (field `pushed:<holder>`, beside `spent`, so it lives and expires
  with it): `spent` grows only by `push_total` minus that, never below 0. A sync retried
  after its reply was lost (Redis had applied it) adds nothing twice, and one delivered late
  after a newer one adds nothing. With no record (the holder's first push this month, or a
  hash reseeded from the ledger, which counted what was pushed before) the base is what the
  replica saw confirmed: `push_total - push_nano`. The holder's entry amount is recorded
  too (`entry:<holder>`), so an entry made by a sync whose reply was lost is replaced, not
  left to expire.

ARGV: rpm, tpm, max_conc, budget_nano (0 / -1 = off), holder, ttl_ms, budget_ttl_s,
  give_requests, want_requests, give_tokens, want_tokens, old_slots, keep_slots, want_slots,
  old_nano (the entry's amount, 0 = none), push_nano, keep_nano, want_nano, push_total.
Answer (integers): seeded (0 = the month's budget is not in Redis yet: nothing was done),
  requests granted, rpm level left, tokens granted, tpm level left, slots held, nano held,
  month spent, nano others could still take, slice entries found expired.
"""

from __future__ import annotations

LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, maxc, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local holder, ttl, budget_ttl = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])

local h = nil
if cap >= 0 then
  h = redis.call('HMGET', KEYS[4], 'spent', 'reserved', 'pushed:' .. holder, 'entry:' .. holder)
  if not h[1] then return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0} end
end

local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- A bucket refilled to now; `give` (negative: a debt) goes back first, then up to `want`
-- whole tokens are taken out. Returns the grant and the level left.
local function bucket(key, capacity, give, want)
  local level = capacity
  local b = redis.call('HMGET', key, 'level', 'ts')
  if b[1] then
    level = tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * capacity / 60000
  end
  level = math.max(-capacity, math.min(capacity, level))
  level = math.max(-capacity, math.min(capacity, level + give))
  local grant = math.max(0, math.min(want, math.floor(level)))
  level = level - grant
  redis.call('HSET', key, 'level', tostring(level), 'ts', now)
  redis.call('PEXPIRE', key, 120000)
  return grant, math.floor(level)
end

local expired = 0
local out = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
if rpm > 0 then
  out[2], out[3] = bucket(KEYS[1], rpm, tonumber(ARGV[8]), tonumber(ARGV[9]))
end
if tpm > 0 then
  out[4], out[5] = bucket(KEYS[2], tpm, tonumber(ARGV[10]), tonumber(ARGV[11]))
end

if maxc > 0 then
  for i = 1, tonumber(ARGV[12]) do redis.call('ZREM', KEYS[3], holder .. '#' .. i) end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 256)) do
    if string.sub(m, 1, 6) == 'slice-' and string.sub(m, -2) == '#1' then
      expired = expired + 1
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local keep = tonumber(ARGV[13])
  local room = maxc - redis.call('ZCARD', KEYS[3]) - keep
  local slots = keep + math.max(0, math.min(tonumber(ARGV[14]), room))
  for i = 1, slots do redis.call('ZADD', KEYS[3], now + ttl, holder .. '#' .. i) end
  if slots > 0 then extend(KEYS[3], ttl + 60000) end
  out[6] = slots
end

if cap >= 0 then
  local reserved = tonumber(h[2] or '0')
  local before = reserved
  -- Reservations (slices included) past their deadline free what they held.
  local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 256)
  for _, m in ipairs(gone) do
    local colon = string.find(m, ':[^:]*$')
    reserved = reserved - (tonumber(string.sub(m, colon + 1)) or 0)
    if string.sub(m, 1, 6) == 'slice-' then expired = expired + 1 end
  end
  if #gone > 0 then redis.call('ZREM', KEYS[5], unpack(gone)) end
  reserved = math.max(0, reserved)
  -- The entry the replica names, and the one recorded here if a lost reply made them differ.
  local function unreserve(amount)
    local old = tonumber(amount)
    if old and old > 0 and redis.call('ZREM', KEYS[5], holder .. ':' .. amount) == 1 then
      reserved = math.max(0, reserved - old)
    end
  end
  unreserve(ARGV[15])
  if h[4] and h[4] ~= ARGV[15] then unreserve(h[4]) end
  local total = tonumber(ARGV[19])
  local applied = tonumber(h[3] or '') or (total - tonumber(ARGV[16]))
  local push = math.max(0, total - applied)
  local spent = tonumber(h[1]) + push
  local keep = tonumber(ARGV[17])
  local free = cap - spent - reserved - keep
  local held = keep + math.max(0, math.min(tonumber(ARGV[18]), free))
  if held > 0 then
    redis.call('ZADD', KEYS[5], now + ttl, holder .. ':' .. string.format('%d', held))
    extend(KEYS[5], ttl + 60000)
  end
  reserved = reserved + held
  -- Increments, not the Lua doubles: the stored integers stay exact at any size.
  if reserved ~= before then
    redis.call('HINCRBY', KEYS[4], 'reserved', string.format('%d', reserved - before))
  end
  if push ~= 0 then redis.call('HINCRBY', KEYS[4], 'spent', string.format('%d', push)) end
  if total > applied then
    redis.call('HSET', KEYS[4], 'pushed:' .. holder, string.format('%d', total))
  end
  if held > 0 then
    local entry = string.format('%d', held)
    if h[4] ~= entry then redis.call('HSET', KEYS[4], 'entry:' .. holder, entry) end
  elseif h[4] then
    redis.call('HDEL', KEYS[4], 'entry:' .. holder)
  end
  redis.call('EXPIRE', KEYS[4], budget_ttl)
  out[7] = held
  out[8] = spent
  out[9] = math.max(0, cap - spent - reserved)
end
out[10] = expired
for k = 1, #out do out[k] = string.format('%d', out[k]) end
return out
"""
