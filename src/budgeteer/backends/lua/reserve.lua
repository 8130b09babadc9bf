-- budgeteer's reserve on Redis: one run of this script, one round trip, atomic over every limit
-- of every scope on the path.
--
-- The same operation as ledger.lua's rules, on the same keys and fields (see its header). It has
-- a script of its own because Redis runs a script's whole chunk on every call, and every
-- redis.call, script argument, table, parsed string or formatted float costs about as much as a
-- small command: this one does only what a reserve needs, walks its arguments in place instead of
-- building tables, and keeps the server's time as the text TIME gave.
--
-- The path's limits come from the client when it sends the hierarchy's limits version (P:lv,
-- bumped by every limit change) and the server's matches; otherwise they are read here and sent
-- back with the version, for the client to cache. P:ne is a lower bound of the expiry of every
-- live hold (the zset P:expiry is scanned only once it has passed): this script is the only one
-- that adds holds, so it alone must lower it, and a stale bound is still a bound.
--
-- KEYS[1] the hierarchy's key prefix P. ARGV: 1 "now" or "" for the server's TIME; 2 calendar
-- bounds "key=start:end;..." (as in ledger.lua); 3 the id; 4 the path; 5 the amounts as
-- "dim=amount,..." (kept in the hold); 6 the TTL in seconds; 7 the limits version the client
-- knows ("" if none); 8 the number of dimensions D; 9 the number of scopes S; then D pairs
-- dim, amount; then the S scopes' hash keys P:s:<scope>, top first; then, with a version, the
-- limits on the requested dimensions as quadruples scope number (1 = top), dim, window key, max,
-- in ledger.lua's order (by scope, then by "dim|window").
--
-- Replies: {'ok', then used, held of each limit checked, as after the hold}, or {'ok+', version,
-- N, N quadruples scope number, dim, window key, max (every limit on the path), then the same
-- pairs} when the client's version was not current; {'deny', scope, dim, window, max, used,
-- held, requested, retry_after or '', now}; {'bounds', window, now} when a calendar window needs
-- bounds the client did not send.

local P = KEYS[1]
local now_text = ARGV[1] ~= '' and ARGV[1] or server_time_text('.')
local now = now_text + 0  -- arithmetic coerces with one strtod; tonumber() runs two
local HOLDS, EXPIRY = P .. ':holds', P .. ':expiry'
local id = ARGV[3]
local D, S = ARGV[8] + 0, ARGV[9] + 0
local SKEYS = 10 + 2 * D  -- ARGV[SKEYS + k - 1] is the hash of scope k
local amounts = {}
for i = 10, 8 + 2 * D, 2 do amounts[ARGV[i]] = ARGV[i + 1] + 0 end

-- The limits on the requested dimensions, as quadruples R[i .. i + 3] for i = first, last, 4.
local R, first, last
local known = redis.call('MGET', P .. ':lv', P .. ':ne')
local version, next_expiry = known[1], tonumber(known[2])
local learned  -- every limit on the path, for the client, when its version was not current
if version and version == ARGV[7] then
  R, first, last = ARGV, SKEYS + S, #ARGV
else
  version, learned, R = read_limits(P, ARGV[4], version, amounts, false)
  first, last = 1, #R
end

local function scope_of(k) return string.sub(ARGV[SKEYS + k - 1], #P + 4) end

local bounds, missing = calendar_check(R, first, last, ARGV, SKEYS - 1, ARGV[2], now)
if missing then return {'bounds', missing, now_text} end

-- Reclaim expired holds, once the lower bound has passed.
local next_text
if not next_expiry or next_expiry <= now then
  reclaim_expired(P, now_text)
  local soonest = redis.call('ZRANGE', EXPIRY, 0, 0, 'WITHSCORES')
  next_expiry, next_text = tonumber(soonest[2]), soonest[2] or ''
end

-- A limit's counters as they are now: used, held, and for a denial either a function of
-- (over, held, requested) giving the retry_after text, or a pacing bucket's arrival time.
local function state(s, dim, wkey, max)
  if wkey == 'lifetime' then
    local c = redis.call('HMGET', s, 'u:' .. dim, 'h:' .. dim)
    return (c[1] or 0) + 0, (c[2] or 0) + 0
  end
  local field = dim .. '|' .. wkey
  local kind = string.sub(wkey, 1, 7)
  if kind == 'rolling' then
    local c = redis.call('HMGET', s, 'h:' .. dim, 'm:' .. field, 'mh:' .. field, 'ml:' .. field)
    local seconds, gran = string.match(wkey, '^rolling:(%d+):(%d+)$')
    gran = tonumber(gran)
    local buckets = tonumber(seconds) / gran
    local used, oldest, newest = refresh_rolling(s, field, now, gran, buckets, tonumber(c[2]) or 0,
      tonumber(c[3]), tonumber(c[4]))
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
  return used, tonumber(c[1]) or 0, function(_, held, requested)
    if held + requested > max then return '' end
    return num(math.max(0, stop - now))
  end
end

local reply
if learned then
  reply = {'ok+', version, #learned / 4}
  for _, v in ipairs(learned) do reply[#reply + 1] = v end
else
  reply = {'ok'}
end

local expires_at = now + ARGV[6]
local expires_text = num(expires_at)
local record = ARGV[4] .. '\n' .. now_text .. '\n' .. expires_text .. '\n' .. ARGV[5]
if redis.call('HSETNX', HOLDS, id, record) == 0 then
  -- A retry whose first reply was lost: the hold is already counted.
  for i = first, last, 4 do
    local used, held = state(ARGV[SKEYS + R[i] - 1], R[i + 1], R[i + 2], R[i + 3] + 0)
    reply[#reply + 1] = used
    reply[#reply + 1] = held
  end
  return reply
end

local paced
for i = first, last, 4 do
  local k, dim, wkey, max = R[i] + 0, R[i + 1], R[i + 2], R[i + 3] + 0
  local requested = amounts[dim]
  local used, held, extra = state(ARGV[SKEYS + k - 1], dim, wkey, max)
  if wkey ~= 'lifetime' and string.sub(wkey, 1, 7) == 'pacing:' then
    -- A GCRA token bucket (budgeteer.ledger._core.pace); extra is its theoretical arrival time.
    if requested > 0 then
      local refill = tonumber(string.sub(wkey, 8)) / 1000000
      if requested > max then
        redis.call('HDEL', HOLDS, id)
        return {'deny', scope_of(k), dim, wkey, max, used, 0, requested, '', now_text}
      end
      local new_tat = math.max(extra, now) + requested * refill / max
      local wait = new_tat - refill - now
      if wait > 1e-6 then
        redis.call('HDEL', HOLDS, id)
        return {'deny', scope_of(k), dim, wkey, max, used, 0, requested, num(wait), now_text}
      end
      paced = paced or {}
      paced[#paced + 1] = {ARGV[SKEYS + k - 1], 'pt:' .. dim .. '|' .. wkey, num(new_tat)}
    end
    used = used + requested
  elseif used + held + requested > max then
    redis.call('HDEL', HOLDS, id)
    local wait = extra and extra(used + held + requested - max, held, requested) or ''
    return {'deny', scope_of(k), dim, wkey, max, used, held, requested, wait, now_text}
  else
    held = held + requested
  end
  reply[#reply + 1] = used
  reply[#reply + 1] = held
end

for _, p in ipairs(paced or {}) do redis.call('HSET', p[1], p[2], p[3]) end
for i = 10, 8 + 2 * D, 2 do
  local name, amount = 'h:' .. ARGV[i], ARGV[i + 1]
  for k = SKEYS, SKEYS + S - 1 do redis.call('HINCRBY', ARGV[k], name, amount) end
end
redis.call('ZADD', EXPIRY, expires_text, id)
if not next_expiry or expires_at < next_expiry then next_text = expires_text end
if next_text then redis.call('SET', P .. ':ne', next_text) end
return reply
