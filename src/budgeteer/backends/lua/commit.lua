-- budgeteer's commit on Redis: one run of this script, one round trip, atomic.
--
-- The same operation as ledger.lua's rules, on the same keys and fields (see its header), in a
-- script of its own for the reasons reserve.lua gives; the path's limits come from the client as
-- they do there.
--
-- KEYS[1] the hierarchy's key prefix. ARGV: 1 "now" or "" for the server's TIME; 2 calendar
-- bounds "key=start:end;..." (as in ledger.lua); 3 the reservation id; 4 the actual usage as
-- "dim=amount,..."; 5 the metadata (JSON, opaque here); 6 the path the client believes the
-- reservation is on ("" if it does not know); 7 the limits version the client knows ("" if
-- none); 8 the number of dimensions D; 9 the unknown-cost flag u:_unpriced: '' if the usage has
-- none, 'add' to add it on every scope, 'known' if the client saw it added on every scope of the
-- path under the version it sends (so it is added only if that version or path is not current:
-- a prune, the one command that deletes a scope's counters, bumps the version); then D pairs
-- dim, amount (the actual usage again, without the flag); then, with a version, the limits on
-- those dimensions other than pacing ones (which pace admissions, not commits) as quadruples
-- scope number (1 = top), dim, window key, max, in ledger.lua's order.
--
-- Replies: {'committed', path, committed at, late '1' or '0', overruns} (the client has the
-- usage and metadata it sent), followed by version, N and N quadruples (every limit on the path,
-- as reserve.lua sends them) when the client's version or path was not current;
-- {'replayed', path, actual, at, late, overruns, metadata} for a retry; {'unknown'};
-- {'released'}; {'bounds', window, now} as in ledger.lua.
--
-- The settled record P:r:<id> keeps 'state' and, packed in one field (one short HSET instead of
-- seven fields), 'v' = "path\nactual\nat\nlate\nmetadata\noverruns" (the JSON has no raw
-- newline; the overruns, last, may have several).

local P = KEYS[1]
local now_text = ARGV[1] ~= '' and ARGV[1] or server_time_text('.')
local now = now_text + 0  -- arithmetic coerces with one strtod; tonumber() runs two
local HOLDS = P .. ':holds'
local id = ARGV[3]
local record_key = P .. ':r:' .. id

local hold = redis.call('HGET', HOLDS, id)
local path, late, held
if hold then
  -- "path\ncreated\nexpires\nheld", cut by plain finds (cheaper than a pattern).
  local a = string.find(hold, '\n', 1, true)
  local b = string.find(hold, '\n', a + 1, true)
  local c = string.find(hold, '\n', b + 1, true)
  path, held = string.sub(hold, 1, a - 1), string.sub(hold, c + 1)
  late = string.sub(hold, b + 1, c - 1) + 0 <= now
else
  local state = redis.call('HGET', record_key, 'state')
  if not state then return {'unknown'} end
  if state == 'released' then return {'released'} end
  if state == 'committed' then
    local v = redis.call('HGET', record_key, 'v')
    if not v then  -- written by ledger.lua's commit before this script had its own
      local r = redis.call('HMGET', record_key, 'path', 'actual', 'at', 'late', 'overruns', 'metadata')
      return {'replayed', r[1], r[2], r[3], r[4], r[5], r[6]}
    end
    local a, b, c, d, e, f = string.match(v, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
    return {'replayed', a, b, c, d, f, e}
  end
  path = redis.call('HGET', record_key, 'path')  -- expired and reclaimed: record it late
  late = true
end

local D = ARGV[8] + 0
local actual_texts = {}  -- parsed only where a number is needed (a rolling window)
for i = 10, 8 + 2 * D, 2 do actual_texts[ARGV[i]] = ARGV[i + 1] end

local skeys = {}  -- the hash P:s:<scope> of each scope on the path, top first
local acc
for segment in string.gmatch(path, '[^/]+') do
  acc = acc and (acc .. '/' .. segment) or segment
  skeys[#skeys + 1] = P .. ':s:' .. acc
end

-- The limits on the committed dimensions, as quadruples R[i .. i + 3] for i = first, last, 4.
local R, first, last
local version = redis.call('GET', P .. ':lv')
local learned  -- every limit on the path, for the client, when its version was not current
if version and version == ARGV[7] and path == ARGV[6] then
  R, first, last = ARGV, 10 + 2 * D, #ARGV
else
  -- pacing limits pace admissions, not commits
  version, learned, R = read_limits(P, path, version, actual_texts, true)
  first, last = 1, #R
end

local bounds, missing = calendar_check(R, first, last, skeys, 0, ARGV[2], now)
if missing then return {'bounds', missing, now_text} end

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
-- totals[dim][k] is the new lifetime total of dim on scope k.
local totals = {}
for i = 10, 8 + 2 * D, 2 do
  local name, amount, by_scope = 'u:' .. ARGV[i], ARGV[i + 1], {}
  for k, s in ipairs(skeys) do by_scope[k] = redis.call('HINCRBY', s, name, amount) end
  totals[ARGV[i]] = by_scope
end
-- Only the flag's being non-zero is read (a scope's cost is unknown), so once set it need not grow.
if ARGV[9] == 'add' or (ARGV[9] == 'known' and learned) then
  for _, s in ipairs(skeys) do redis.call('HINCRBY', s, 'u:_unpriced', 1) end
end

local over = {}
for i = first, last, 4 do
  local k, dim, wkey, max = R[i] + 0, R[i + 1], R[i + 2], R[i + 3] + 0
  local s, field, used = skeys[k], nil, nil  -- field: only windows other than lifetime
  if wkey == 'lifetime' then
    used = totals[dim][k]
  elseif string.sub(wkey, 1, 8) == 'rolling:' then
    field = dim .. '|' .. wkey
    local seconds, gran = string.match(wkey, '^rolling:(%d+):(%d+)$')
    gran = tonumber(gran)
    local c = redis.call('HMGET', s, 'm:' .. field, 'mh:' .. field, 'ml:' .. field)
    local oldest, newest
    used, oldest, newest = refresh_rolling(s, field, now, gran, tonumber(seconds) / gran,
      tonumber(c[1]) or 0, tonumber(c[2]), tonumber(c[3]))
    used = used + tonumber(actual_texts[dim])
    add_to_bucket(s, field, now, gran, oldest, newest, actual_texts[dim], 'm:' .. field, used)
  else
    -- A calendar window: a period that has ended starts again (its bounds were checked above).
    field = dim .. '|' .. wkey
    if now >= (tonumber(redis.call('HGET', s, 'me:' .. field)) or 0) then
      local b = bounds[wkey]
      redis.call('HSET', s, 'ms:' .. field, num(b[1]), 'me:' .. field, num(b[2]), 'm:' .. field, 0)
    end
    used = redis.call('HINCRBY', s, 'm:' .. field, actual_texts[dim])
  end
  if used > max then
    local held_now = tonumber(redis.call('HGET', s, 'h:' .. dim)) or 0
    for _, v in ipairs({string.sub(s, #P + 4), dim, wkey, num(max), num(used), num(held_now)}) do
      over[#over + 1] = v
    end
  end
end

local over_text = table.concat(over, '\n')
local late_text = late and '1' or '0'
redis.call('HSET', record_key, 'state', 'committed', 'v',
  path .. '\n' .. ARGV[4] .. '\n' .. now_text .. '\n' .. late_text .. '\n' .. ARGV[5] .. '\n' .. over_text)
redis.call('EXPIRE', record_key, '604800')  -- 7 days; a number would be formatted by %.17g
local reply = {'committed', path, now_text, late_text, over_text}
if learned then
  reply[6], reply[7] = version, #learned / 4
  for _, v in ipairs(learned) do reply[#reply + 1] = v end
end
return reply
