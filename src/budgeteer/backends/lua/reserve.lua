-- budgeteer's reserve on Redis: one run of this script, one round trip, atomic over every limit
-- of every scope on the path.
--
-- The same operation as `reserve` in ledger.lua, on the same keys and fields (see its header).
-- It has a script of its own because Redis runs a script's whole chunk on every call and every
-- redis.call, script argument, formatted float or parsed string costs about as much as a small
-- command: this one does only what a reserve needs, and keeps the server's time as the text TIME
-- gave (formatting a double costs more than a command).
--
-- KEYS[1] the hierarchy's key prefix. ARGV: 1 "now" or "" for the server's TIME; 2 calendar
-- bounds "key=start:end;..." (as in ledger.lua); 3 the id; 4 the path; 5 the amounts as
-- "dim=amount,..." (kept in the hold); 6 the TTL in seconds; 7 the number of dimensions D, then D
-- pairs dim, amount; then the path's scopes, top first. (Pre-split by the client.)
--
-- Replies: {'ok', then scope, dim, window, max, used, held for each limit checked, as after the
-- hold}; {'deny', scope, dim, window, max, used, held, requested, retry_after or '', now};
-- {'bounds', window, now} when a calendar window needs bounds the client did not send.

local P = KEYS[1]
local now_text
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now_text = t[1] .. '.' .. string.sub('00000' .. t[2], -6)
else
  now_text = ARGV[1]
end
local now = tonumber(now_text)
local HOLDS, EXPIRY = P .. ':holds', P .. ':expiry'
local id, path = ARGV[3], ARGV[4]

local D = tonumber(ARGV[7])
local dims, amounts, amount_texts = {}, {}, {}
for i = 8, 6 + 2 * D, 2 do
  local dim = ARGV[i]
  dims[#dims + 1] = dim
  amount_texts[dim] = ARGV[i + 1]
  amounts[dim] = tonumber(ARGV[i + 1])
end
local scopes, skeys = {}, {}
for i = 8 + 2 * D, #ARGV do
  scopes[#scopes + 1] = ARGV[i]
  skeys[#skeys + 1] = P .. ':s:' .. ARGV[i]
end

-- The limits on the requested dimensions, in ledger.lua's order (by scope, then by field):
-- rows of {scope, dim, window key, max, field, scope hash}.
local rows = {}
for k, scope in ipairs(scopes) do
  local flat = redis.call('HGETALL', P .. ':l:' .. scope)
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
    if amounts[dim] then
      rows[#rows + 1] = {scope, dim, string.sub(field, bar + 1), tonumber(flat[i + 1]), field, skeys[k]}
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
    local stop = tonumber(redis.call('HGET', row[6], 'me:' .. row[5]) or '0')
    local b = bounds[row[3]]
    if now >= stop and (not b or now < b[1] or now >= b[2]) then
      return {'bounds', row[3], now_text}
    end
  end
end

-- Reclaim expired holds (as ledger.lua's reclaim_expired).
local due = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now_text, 'LIMIT', 0, 256)
for _, hid in ipairs(due) do
  local hold = redis.call('HGET', HOLDS, hid)
  if hold then
    local hpath, _, _, held = string.match(hold, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
    local acc
    for segment in string.gmatch(hpath, '[^/]+') do
      acc = acc and (acc .. '/' .. segment) or segment
      for dim, amount in string.gmatch(held, '([^=,]+)=(%d+)') do
        if amount ~= '0' then redis.call('HINCRBY', P .. ':s:' .. acc, 'h:' .. dim, '-' .. amount) end
      end
    end
    redis.call('HDEL', HOLDS, hid)
    redis.call('HSET', P .. ':r:' .. hid, 'state', 'expired', 'path', hpath)
    redis.call('EXPIRE', P .. ':r:' .. hid, 7 * 86400)
  end
  redis.call('ZREM', EXPIRY, hid)
end

local function num(x) return string.format('%.17g', x) end

-- Bring a rolling window up to now (ledger.lua's refresh); returns used, oldest, newest, gran,
-- buckets.
local function roll(s, field, wkey, used, oldest, newest)
  local seconds, gran = string.match(wkey, '^rolling:(%d+):(%d+)$')
  gran = tonumber(gran)
  local buckets = tonumber(seconds) / gran
  if not oldest then return used, nil, nil, gran, buckets end
  local cutoff = math.floor(now / gran) - buckets
  if oldest >= cutoff then return used, oldest, newest, gran, buckets end
  for index = oldest, math.min(newest, cutoff - 1) do
    local bucket = 'b:' .. field .. '|' .. index
    local amount = redis.call('HGET', s, bucket)
    if amount then
      used = used - tonumber(amount)
      redis.call('HDEL', s, bucket)
    end
  end
  if newest < cutoff then
    redis.call('HDEL', s, 'mh:' .. field, 'ml:' .. field)
    redis.call('HSET', s, 'm:' .. field, 0)
    return 0, nil, nil, gran, buckets
  end
  redis.call('HSET', s, 'mh:' .. field, cutoff, 'm:' .. field, used)
  return used, cutoff, newest, gran, buckets
end

-- Each limit's counters as they are now: used, held, and what its denial needs to say when to
-- retry (a closure, built only for windows that can compute it).
local function state(row)
  local dim, wkey, max, field, s = row[2], row[3], row[4], row[5], row[6]
  if wkey == 'lifetime' then
    local c = redis.call('HMGET', s, 'u:' .. dim, 'h:' .. dim)
    return tonumber(c[1]) or 0, tonumber(c[2]) or 0
  end
  local kind = string.sub(wkey, 1, 7)
  if kind == 'rolling' then
    local c = redis.call('HMGET', s, 'h:' .. dim, 'm:' .. field, 'mh:' .. field, 'ml:' .. field)
    local used, oldest, newest, gran, buckets =
      roll(s, field, wkey, tonumber(c[2]) or 0, tonumber(c[3]), tonumber(c[4]))
    return used, tonumber(c[1]) or 0, function(over)
      if not oldest then return '' end
      local names = {}
      for index = oldest, newest do names[#names + 1] = 'b:' .. field .. '|' .. index end
      local freed = 0
      for i, amount in ipairs(redis.call('HMGET', s, unpack(names))) do
        freed = freed + (tonumber(amount) or 0)
        if freed >= over then
          return num(math.max(0, (oldest + i - 1 + buckets + 1) * gran - now))
        end
      end
      return ''
    end
  end
  if kind == 'pacing:' then
    local tat = tonumber(redis.call('HGET', s, 'pt:' .. field) or '0')
    local level = 0
    if tat > now and max > 0 then
      local refill = tonumber(string.sub(wkey, 8)) / 1000000
      level = math.min(math.max(math.ceil((tat - now) * max / refill - 1e-4), 0), max)
    end
    return level, 0, tat
  end
  -- A calendar window: a period that has ended starts again (its bounds were checked above).
  local c = redis.call('HMGET', s, 'h:' .. dim, 'm:' .. field, 'me:' .. field)
  local used, stop = tonumber(c[2]) or 0, tonumber(c[3]) or 0
  if now >= stop then
    local b = bounds[wkey]
    redis.call('HSET', s, 'ms:' .. field, num(b[1]), 'me:' .. field, num(b[2]), 'm:' .. field, 0)
    used, stop = 0, b[2]
  end
  return used, tonumber(c[1]) or 0, function(over, held, requested)
    if held + requested > max then return '' end
    return num(math.max(0, stop - now))
  end
end

local expires_at = now + tonumber(ARGV[6])
local expires_text = num(expires_at)
local record = path .. '\n' .. now_text .. '\n' .. expires_text .. '\n' .. ARGV[5]
if redis.call('HSETNX', HOLDS, id, record) == 0 then
  -- A retry whose first reply was lost: the hold is already counted.
  local reply = {'ok'}
  for _, row in ipairs(rows) do
    local used, held = state(row)
    for i = 1, 4 do reply[#reply + 1] = row[i] end
    reply[#reply + 1] = used
    reply[#reply + 1] = held
  end
  return reply
end

local reply, paced = {'ok'}, {}
for _, row in ipairs(rows) do
  local scope, dim, wkey, max = row[1], row[2], row[3], row[4]
  local requested = amounts[dim]
  local used, held, extra = state(row)
  if string.sub(wkey, 1, 7) == 'pacing:' then
    -- A GCRA token bucket (budgeteer.ledger._core.pace): extra is its theoretical arrival time.
    if requested > 0 then
      local refill = tonumber(string.sub(wkey, 8)) / 1000000
      if requested > max then
        redis.call('HDEL', HOLDS, id)
        return {'deny', scope, dim, wkey, max, used, 0, requested, '', now_text}
      end
      local new_tat = math.max(extra, now) + requested * refill / max
      local wait = new_tat - refill - now
      if wait > 1e-6 then
        redis.call('HDEL', HOLDS, id)
        return {'deny', scope, dim, wkey, max, used, 0, requested, num(wait), now_text}
      end
      paced[#paced + 1] = {row[6], 'pt:' .. row[5], num(new_tat)}
    end
    used = used + requested
  elseif used + held + requested > max then
    redis.call('HDEL', HOLDS, id)
    local wait = extra and extra(used + held + requested - max, held, requested) or ''
    return {'deny', scope, dim, wkey, max, used, held, requested, wait, now_text}
  else
    held = held + requested
  end
  for i = 1, 4 do reply[#reply + 1] = row[i] end
  reply[#reply + 1] = used
  reply[#reply + 1] = held
end

for _, p in ipairs(paced) do redis.call('HSET', p[1], p[2], p[3]) end
for _, s in ipairs(skeys) do
  for _, dim in ipairs(dims) do redis.call('HINCRBY', s, 'h:' .. dim, amount_texts[dim]) end
end
redis.call('ZADD', EXPIRY, expires_text, id)
return reply
