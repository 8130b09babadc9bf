-- budgeteer's commit on Redis: one run of this script, one round trip, atomic.
--
-- The same operation as `commit` in ledger.lua, on the same keys and fields (see its header), in a
-- script of its own for the reason reserve.lua gives.
--
-- KEYS[1] the hierarchy's key prefix. ARGV: 1 "now" or "" for the server's TIME; 2 calendar
-- bounds "key=start:end;..." (as in ledger.lua); 3 the reservation id; 4 the actual usage as
-- "dim=amount,..."; 5 the metadata (JSON, opaque here); 6 the number of dimensions D, then D pairs
-- dim, amount (the actual usage again, pre-split by the client).
--
-- Replies: {'committed', path, committed at, late '1' or '0', overruns} (the client has the
-- usage and metadata it sent); {'replayed', path, actual, at, late, overruns, metadata} for a
-- retry; {'unknown'}; {'released'}; {'bounds', window, now} as in ledger.lua.

local P = KEYS[1]
local now_text
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now_text = t[1] .. '.' .. string.sub('00000' .. t[2], -6)
else
  now_text = ARGV[1]
end
local now = tonumber(now_text)
local HOLDS = P .. ':holds'
local id = ARGV[3]
local record_key = P .. ':r:' .. id

local hold = redis.call('HGET', HOLDS, id)
local path, late, held
if hold then
  local created, expires
  path, created, expires, held = string.match(hold, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
  late = tonumber(expires) <= now
else
  local state = redis.call('HGET', record_key, 'state')
  if not state then return {'unknown'} end
  if state == 'released' then return {'released'} end
  if state == 'committed' then
    local r = redis.call('HMGET', record_key, 'path', 'actual', 'at', 'late', 'overruns', 'metadata')
    return {'replayed', r[1], r[2], r[3], r[4], r[5], r[6]}
  end
  path = redis.call('HGET', record_key, 'path')  -- expired and reclaimed: record it late
  late = true
end

local D = tonumber(ARGV[6])
local dims, actual, actual_texts = {}, {}, {}
for i = 7, 5 + 2 * D, 2 do
  local dim = ARGV[i]
  dims[#dims + 1] = dim
  actual_texts[dim] = ARGV[i + 1]
  actual[dim] = tonumber(ARGV[i + 1])
end

-- The path's scopes and the limits on the committed dimensions, in ledger.lua's order; pacing
-- limits pace admissions, not commits, and are skipped.
local scopes, skeys, rows = {}, {}, {}
local acc
for segment in string.gmatch(path, '[^/]+') do
  acc = acc and (acc .. '/' .. segment) or segment
  local k = #scopes + 1
  scopes[k], skeys[k] = acc, P .. ':s:' .. acc
  local flat = redis.call('HGETALL', P .. ':l:' .. acc)
  if #flat > 2 then
    local pairs_ = {}
    for i = 1, #flat, 2 do pairs_[#pairs_ + 1] = {flat[i], flat[i + 1]} end
    table.sort(pairs_, function(a, b) return a[1] < b[1] end)
    flat = {}
    for _, pair in ipairs(pairs_) do flat[#flat + 1] = pair[1]; flat[#flat + 1] = pair[2] end
  end
  for i = 1, #flat, 2 do
    local field = flat[i]
    local bar = string.find(field, '|', 1, true)
    local dim = string.sub(field, 1, bar - 1)
    local wkey = string.sub(field, bar + 1)
    if actual[dim] and string.sub(wkey, 1, 7) ~= 'pacing:' then
      rows[#rows + 1] = {acc, dim, wkey, tonumber(flat[i + 1]), field, k}
    end
  end
end

-- Calendar windows whose period has ended need bounds from the client; checked before any write.
local bounds
for _, row in ipairs(rows) do
  if string.sub(row[3], 1, 9) == 'calendar:' then
    if not bounds then
      bounds = {}
      for key, start, stop in string.gmatch(ARGV[2], '([^=;]+)=([^:;]+):([^;]+)') do
        bounds[key] = {tonumber(start), tonumber(stop)}
      end
    end
    local stop = tonumber(redis.call('HGET', skeys[row[6]], 'me:' .. row[5]) or '0')
    local b = bounds[row[3]]
    if now >= stop and (not b or now < b[1] or now >= b[2]) then
      return {'bounds', row[3], now_text}
    end
  end
end

if hold then
  for dim, amount in string.gmatch(held, '([^=,]+)=(%d+)') do
    if amount ~= '0' then
      local name, minus = 'h:' .. dim, '-' .. amount
      for _, s in ipairs(skeys) do redis.call('HINCRBY', s, name, minus) end
    end
  end
  redis.call('HDEL', HOLDS, id)
  redis.call('ZREM', P .. ':expiry', id)
end

-- Record the usage on every scope; lifetime limits read the new totals.
local totals = {}
for k, s in ipairs(skeys) do
  local scope_totals = {}
  for _, dim in ipairs(dims) do
    scope_totals[dim] = redis.call('HINCRBY', s, 'u:' .. dim, actual_texts[dim])
  end
  totals[k] = scope_totals
end

local function num(x) return string.format('%.17g', x) end

local over = {}
for _, row in ipairs(rows) do
  local scope, dim, wkey, max, field, k = row[1], row[2], row[3], row[4], row[5], row[6]
  local s, amount = skeys[k], actual[dim]
  local used
  if wkey == 'lifetime' then
    used = totals[k][dim]
  elseif string.sub(wkey, 1, 8) == 'rolling:' then
    -- ledger.lua's refresh, then add_to_meter.
    local seconds, gran = string.match(wkey, '^rolling:(%d+):(%d+)$')
    gran = tonumber(gran)
    local c = redis.call('HMGET', s, 'm:' .. field, 'mh:' .. field, 'ml:' .. field)
    used = tonumber(c[1]) or 0
    local oldest, newest = tonumber(c[2]), tonumber(c[3])
    local cutoff = math.floor(now / gran) - tonumber(seconds) / gran
    if oldest and oldest < cutoff then
      for index = oldest, math.min(newest, cutoff - 1) do
        local bucket = 'b:' .. field .. '|' .. index
        local old = redis.call('HGET', s, bucket)
        if old then
          used = used - tonumber(old)
          redis.call('HDEL', s, bucket)
        end
      end
      if newest < cutoff then
        redis.call('HDEL', s, 'mh:' .. field, 'ml:' .. field)
        used, oldest, newest = 0, nil, nil
      else
        oldest = cutoff
        redis.call('HSET', s, 'mh:' .. field, cutoff)
      end
    end
    used = used + amount
    local index = math.floor(now / gran)
    if newest and newest >= index then index = newest end  -- a clock that stepped back
    redis.call('HINCRBY', s, 'b:' .. field .. '|' .. index, actual_texts[dim])
    if oldest then
      redis.call('HSET', s, 'm:' .. field, used, 'ml:' .. field, index)
    else
      redis.call('HSET', s, 'm:' .. field, used, 'ml:' .. field, index, 'mh:' .. field, index)
    end
  else
    -- A calendar window: a period that has ended starts again (its bounds were checked above).
    if now >= tonumber(redis.call('HGET', s, 'me:' .. field) or '0') then
      local b = bounds[wkey]
      redis.call('HSET', s, 'ms:' .. field, num(b[1]), 'me:' .. field, num(b[2]), 'm:' .. field, 0)
    end
    used = redis.call('HINCRBY', s, 'm:' .. field, actual_texts[dim])
  end
  if used > max then
    local held_now = tonumber(redis.call('HGET', s, 'h:' .. dim) or '0')
    for _, v in ipairs({scope, dim, wkey, num(max), num(used), num(held_now)}) do
      over[#over + 1] = v
    end
  end
end

local over_text = table.concat(over, '\n')
local late_text = late and '1' or '0'
redis.call('HSET', record_key, 'state', 'committed', 'path', path, 'actual', ARGV[4], 'at', now_text,
  'late', late_text, 'overruns', over_text, 'metadata', ARGV[5])
redis.call('EXPIRE', record_key, 7 * 86400)
return {'committed', path, now_text, late_text, over_text}
