-- budgeteer's ledger on Redis: every operation is this one script, one round trip, atomic.
--
-- KEYS[1]  the key prefix with the hierarchy's hash tag, e.g. "budgeteer:{org:acme}"; every key
--          an operation touches starts with it, so all of them live in one Cluster slot.
-- ARGV[1]  the operation; ARGV[2] "now" in epoch seconds, or "" for the server's TIME;
--          ARGV[3] calendar bounds "key=start:end;..." for the calendar windows the client knows.
--
-- Amounts are integers in storage units; Lua numbers are doubles, exact below 2^53, which the
-- Python side enforces as the largest amount and limit. The rules mirror budgeteer.ledger._core:
-- a request crosses a limit when used + held + requested > max.
--
-- reserve and commit have scripts of their own (reserve.lua, commit.lua) on the same keys; the
-- rules the scripts share are local functions in _shared.lua, put before each script's text.
--
-- Per scope S: hash P:s:S holds u:<dim> (lifetime used), h:<dim> (held) and windowed meters
-- (m:<dim>|<window> used, ms:/me: a calendar period's bounds, mh:/ml: a rolling window's oldest
-- and newest bucket, b:<dim>|<window>|<index> a bucket, pt:<dim>|<window> a pacing bucket's
-- theoretical arrival time); hash P:l:S maps "<dim>|<window>" to the
-- cap. P:holds maps a hold id to "path\ncreated\nexpires\namounts", P:expiry orders them by
-- expiry, and P:r:<id> records a settled id (kept RETENTION seconds) for idempotent retries.
-- P:lv is the hierarchy's limits version, bumped by every change to a P:l:S hash: clients cache
-- a path's limits under it (see reserve.lua).

local P = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2] ~= '' and ARGV[2] or server_time_text('.'))

local HOLDS = P .. ':holds'
local EXPIRY = P .. ':expiry'
local RETENTION = 7 * 86400

local function skey(scope) return P .. ':s:' .. scope end
local function lkey(scope) return P .. ':l:' .. scope end
local function rkey(id) return P .. ':r:' .. id end

local function decode(text)
  local amounts, order = {}, {}
  for dim, amount in string.gmatch(text or '', '([^=,]+)=(%d+)') do
    amounts[dim] = tonumber(amount)
    order[#order + 1] = dim
  end
  return amounts, order
end

local function prefixes(path)
  local out, acc = {}, nil
  for segment in string.gmatch(path, '[^/]+') do
    if acc then acc = acc .. '/' .. segment else acc = segment end
    out[#out + 1] = acc
  end
  return out
end

local function split_lines(text)
  local out = {}
  for line in string.gmatch(text .. '\n', '([^\n]*)\n') do out[#out + 1] = line end
  return out
end

local bounds = {}
for key, start, stop in string.gmatch(ARGV[3] or '', '([^=;]+)=([^:;]+):([^;]+)') do
  bounds[key] = {tonumber(start), tonumber(stop)}
end

-- A window key is "lifetime", "rolling:<seconds>:<granularity>" or "calendar:...".
local function window_of(wkey)
  if wkey == 'lifetime' then return {kind = 'lifetime'} end
  local seconds, gran = string.match(wkey, '^rolling:(%d+):(%d+)$')
  if seconds then
    seconds, gran = tonumber(seconds), tonumber(gran)
    return {kind = 'rolling', seconds = seconds, gran = gran, buckets = seconds / gran}
  end
  local us = string.match(wkey, '^pacing:(%d+)$')
  if us then return {kind = 'pacing', refill = tonumber(us) / 1000000} end
  return {kind = 'calendar'}
end

-- Pacing windows are GCRA token buckets (budgeteer.ledger._core.pace and pacing_level): one
-- timestamp, the theoretical arrival time, per limit.
local PACING_SLACK = 1e-6
local function pacing_level(tat, max, refill)
  if tat <= now or max <= 0 then return 0 end
  local level = math.ceil((tat - now) * max / refill - 1e-4)
  if level < 0 then level = 0 end
  if level > max then level = max end
  return level
end

local function pace(tat, requested, max, refill)
  if requested <= 0 then return true, tat end
  if requested > max then return false, nil end
  local base = tat
  if now > base then base = now end
  local new_tat = base + requested * refill / max
  local wait = new_tat - refill - now
  if wait <= PACING_SLACK then return true, new_tat end
  return false, wait
end

-- Bring a windowed meter up to now and return its used amount (bounds checked beforehand).
local function refresh(scope, dim, wkey, window)
  local s = skey(scope)
  local id = dim .. '|' .. wkey
  if window.kind == 'calendar' then
    local stop = tonumber(redis.call('HGET', s, 'me:' .. id) or '0')
    if now >= stop then
      local b = bounds[wkey]
      redis.call('HSET', s, 'ms:' .. id, num(b[1]), 'me:' .. id, num(b[2]), 'm:' .. id, 0)
      return 0
    end
    return tonumber(redis.call('HGET', s, 'm:' .. id) or '0')
  end
  local c = redis.call('HMGET', s, 'm:' .. id, 'mh:' .. id, 'ml:' .. id)
  return (refresh_rolling(s, id, now, window.gran, window.buckets, tonumber(c[1] or '0'),
    tonumber(c[2]), tonumber(c[3])))
end

local function add_to_meter(scope, dim, wkey, window, amount)
  local s = skey(scope)
  local id = dim .. '|' .. wkey
  redis.call('HINCRBY', s, 'm:' .. id, amount)
  if window.kind == 'rolling' then
    local c = redis.call('HMGET', s, 'mh:' .. id, 'ml:' .. id)
    add_to_bucket(s, id, now, window.gran, c[1], tonumber(c[2]), amount)
  end
end

local function retry_after(scope, dim, wkey, window, used, held, requested, max)
  local s = skey(scope)
  local id = dim .. '|' .. wkey
  if window.kind == 'calendar' then
    if held + requested > max then return '' end
    return num(math.max(0, tonumber(redis.call('HGET', s, 'me:' .. id)) - now))
  end
  if window.kind ~= 'rolling' then return '' end
  local over = used + held + requested - max
  local oldest = redis.call('HGET', s, 'mh:' .. id)
  if not oldest then return '' end
  local freed = 0
  for index = tonumber(oldest), tonumber(redis.call('HGET', s, 'ml:' .. id)) do
    freed = freed + tonumber(redis.call('HGET', s, 'b:' .. id .. '|' .. index) or '0')
    if freed >= over then
      return num(math.max(0, (index + window.buckets + 1) * window.gran - now))
    end
  end
  return ''
end

-- The limits of one scope as a list of {dim, wkey, max, field}, in a stable order; read once
-- per script run (every redis.call costs a few microseconds of the server's single thread).
local limit_cache = {}
local function limits_of(scope)
  local cached = limit_cache[scope]
  if cached then return cached end
  local flat = redis.call('HGETALL', lkey(scope))
  local out = {}
  for i = 1, #flat, 2 do
    local dim, wkey = string.match(flat[i], '^([^|]+)|(.+)$')
    out[#out + 1] = {dim, wkey, tonumber(flat[i + 1]), flat[i]}
  end
  table.sort(out, function(a, b) return a[4] < b[4] end)
  limit_cache[scope] = out
  return out
end

-- The first calendar window on these scopes (dims in `only`, if given) whose period has ended
-- and for which the client sent no bounds holding now; nil when all are ready. Checked before
-- any write, since a Redis script that fails half-way keeps its writes.
local function missing_bounds(scopes, only)
  for _, scope in ipairs(scopes) do
    for _, limit in ipairs(limits_of(scope)) do
      local dim, wkey = limit[1], limit[2]
      if string.sub(wkey, 1, 9) == 'calendar:' and (not only or only[dim]) then
        local stop = tonumber(redis.call('HGET', skey(scope), 'me:' .. limit[4]) or '0')
        local b = bounds[wkey]
        if now >= stop and (not b or now < b[1] or now >= b[2]) then return wkey end
      end
    end
  end
  return nil
end

local function drop_hold(path, amounts)
  for _, scope in ipairs(prefixes(path)) do
    for dim, amount in pairs(amounts) do
      redis.call('HINCRBY', skey(scope), 'h:' .. dim, -amount)
    end
  end
end

-- A new limits version; starting from the server's TIME in microseconds when there was none, so
-- a version is never reused after a flush.
local function bump_limits_version()
  if redis.call('INCR', P .. ':lv') == 1 then
    redis.call('SET', P .. ':lv', server_time_text(''))
  end
end

local function settle_record(id, fields)
  redis.call('HSET', rkey(id), unpack(fields))
  redis.call('EXPIRE', rkey(id), RETENTION)
end

-- Record actual usage on every scope of path; returns the overruns as a flat list.
local function record(path, actual, order)
  local over = {}
  for _, scope in ipairs(prefixes(path)) do
    local s = skey(scope)
    local totals = {}
    for _, dim in ipairs(order) do
      totals[dim] = redis.call('HINCRBY', s, 'u:' .. dim, actual[dim])
    end
    for _, limit in ipairs(limits_of(scope)) do
      local dim, wkey, max = limit[1], limit[2], limit[3]
      local amount = actual[dim]
      local window = window_of(wkey)
      if amount and window.kind ~= 'pacing' then  -- buckets pace admissions, not commits
        local used
        if window.kind == 'lifetime' then
          used = totals[dim]
        else
          refresh(scope, dim, wkey, window)
          add_to_meter(scope, dim, wkey, window, amount)
          used = tonumber(redis.call('HGET', s, 'm:' .. dim .. '|' .. wkey))
        end
        if used > max then  -- formatted here: table.concat would write 15+ digits as %.14g
          local held = tonumber(redis.call('HGET', s, 'h:' .. dim) or '0')
          for _, v in ipairs({scope, dim, wkey, num(max), num(used), num(held)}) do
            over[#over + 1] = v
          end
        end
      end
    end
  end
  return over
end

-- Every limit of the given scopes with its counters, optionally only the dims in `only`.
local function states(scopes, only)
  local out = {}
  for _, scope in ipairs(scopes) do
    local s = skey(scope)
    for _, limit in ipairs(limits_of(scope)) do
      local dim, wkey, max = limit[1], limit[2], limit[3]
      if not only or only[dim] then
        local window = window_of(wkey)
        if window.kind == 'pacing' then
          local tat = tonumber(redis.call('HGET', s, 'pt:' .. limit[4]) or '0')
          local used = pacing_level(tat, max, window.refill)
          out[#out + 1] = {scope, dim, wkey, max, used, 0, window, tat}
        else
          local counters = redis.call('HMGET', s, 'u:' .. dim, 'h:' .. dim)
          local used = tonumber(counters[1] or '0')
          if window.kind ~= 'lifetime' then used = refresh(scope, dim, wkey, window) end
          local held = tonumber(counters[2] or '0')
          out[#out + 1] = {scope, dim, wkey, max, used, held, window}
        end
      end
    end
  end
  return out
end

local function flatten(rows)
  local out = {}
  for _, row in ipairs(rows) do
    for i = 1, 6 do out[#out + 1] = row[i] end
  end
  return out
end

-- Check the limits on the requested dims of scopes (a hold when `hold`, else an admission);
-- pacing buckets advance only if every limit admits. Returns the rows as after, or a denial.
local function check(scopes, amounts, hold)
  local rows = states(scopes, amounts)
  local paced = {}
  for _, row in ipairs(rows) do
    local scope, dim, wkey, max, used, held, window = unpack(row)
    local requested = amounts[dim]
    if window.kind == 'pacing' then
      local ok, value = pace(row[8], requested, max, window.refill)
      if not ok then
        return nil, {'deny', scope, dim, wkey, max, used, 0, requested, value and num(value) or '',
          num(now)}
      end
      paced[#paced + 1] = {scope, dim .. '|' .. wkey, value}
      row[5] = used + requested
    else
      if used + held + requested > max then
        local wait = retry_after(scope, dim, wkey, window, used, held, requested, max)
        return nil, {'deny', scope, dim, wkey, max, used, held, requested, wait, num(now)}
      end
      if hold then row[6] = held + requested else row[5] = used + requested end
    end
  end
  for _, p in ipairs(paced) do
    redis.call('HSET', skey(p[1]), 'pt:' .. p[2], num(p[3]))
  end
  return rows, nil
end

if op == 'admit' then
  -- ARGV: 4 path, 5 amounts, 6 expected number of limits on the path ('-1': any)
  local path = ARGV[4]
  local amounts, order = decode(ARGV[5])
  local scopes = prefixes(path)
  local missing = missing_bounds(scopes, amounts)
  if missing then return {'bounds', missing, num(now)} end
  local expect = tonumber(ARGV[6])
  if expect >= 0 then
    local count = 0
    for _, scope in ipairs(scopes) do count = count + #limits_of(scope) end
    if count ~= expect then return {'stale'} end
  end
  reclaim_expired(P, num(now))
  local rows, denial = check(scopes, amounts, false)
  if denial then return denial end
  for _, scope in ipairs(scopes) do
    local s = skey(scope)
    for _, dim in ipairs(order) do redis.call('HINCRBY', s, 'u:' .. dim, amounts[dim]) end
  end
  for _, row in ipairs(rows) do
    local window = row[7]
    if window.kind == 'rolling' or window.kind == 'calendar' then
      add_to_meter(row[1], row[2], row[3], window, amounts[row[2]])
    end
  end
  local reply = {'ok', num(now), ''}
  for _, v in ipairs(flatten(rows)) do reply[#reply + 1] = v end
  return reply
end

if op == 'prune' then
  -- ARGV: 4 scope. Forget it only if nothing on it is live (see Backend.prune).
  local scope = ARGV[4]
  reclaim_expired(P, num(now))
  local s = skey(scope)
  local flat = redis.call('HGETALL', s)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'h:' and tonumber(flat[i + 1]) ~= 0 then return {0} end
  end
  for _, limit in ipairs(limits_of(scope)) do
    local dim, wkey, id = limit[1], limit[2], limit[4]
    local window = window_of(wkey)
    if window.kind == 'lifetime' then
      if tonumber(redis.call('HGET', s, 'u:' .. dim) or '0') > 0 then return {0} end
    elseif window.kind == 'pacing' then
      if tonumber(redis.call('HGET', s, 'pt:' .. id) or '0') > now then return {0} end
    elseif window.kind == 'calendar' then
      local stop = tonumber(redis.call('HGET', s, 'me:' .. id) or '0')
      if now < stop and tonumber(redis.call('HGET', s, 'm:' .. id) or '0') > 0 then return {0} end
    elseif refresh(scope, dim, wkey, window) > 0 then
      return {0}
    end
  end
  local deleted = redis.call('DEL', s, lkey(scope))
  bump_limits_version()
  return {deleted}
end

if op == 'charge' then
  -- ARGV: 4 id, 5 path, 6 actual, 7 metadata. Idempotent by id, like a commit.
  local id = ARGV[4]
  if redis.call('HGET', rkey(id), 'state') == 'committed' then
    local r = redis.call('HMGET', rkey(id), 'path', 'actual', 'at', 'late', 'overruns', 'metadata')
    return {'replayed', r[1], r[2], r[3], r[4], r[5], r[6]}
  end
  local actual, order = decode(ARGV[6])
  local missing = missing_bounds(prefixes(ARGV[5]), actual)
  if missing then return {'bounds', missing, num(now)} end
  local over_text = table.concat(record(ARGV[5], actual, order), '\n')
  settle_record(id, {'state', 'committed', 'path', ARGV[5], 'actual', ARGV[6], 'at', num(now),
    'late', '0', 'overruns', over_text, 'metadata', ARGV[7]})
  return {'committed', ARGV[5], ARGV[6], num(now), '0', over_text, ARGV[7]}
end

if op == 'release' then
  local id = ARGV[4]
  local hold = redis.call('HGET', HOLDS, id)
  if hold then
    local parts = split_lines(hold)
    drop_hold(parts[1], decode(parts[4]))
    redis.call('HDEL', HOLDS, id)
    redis.call('ZREM', EXPIRY, id)
    -- A lapsed hold ends as "expired", as if expiry had reclaimed it first.
    local state = (tonumber(parts[3]) <= now) and 'expired' or 'released'
    settle_record(id, {'state', state, 'path', parts[1]})
    return {'ok'}
  end
  local state = redis.call('HGET', rkey(id), 'state')
  if not state then return {'unknown'} end
  if state == 'committed' then return {'committed'} end
  return {'ok'}
end

if op == 'peek' then
  -- ARGV: 4 path
  local missing = missing_bounds(prefixes(ARGV[4]), nil)
  if missing then return {'bounds', missing, num(now)} end
  reclaim_expired(P, num(now))
  return flatten(states(prefixes(ARGV[4]), nil))
end

if op == 'meters' then
  -- ARGV: 4 scope
  local scope = ARGV[4]
  local missing = missing_bounds({scope}, nil)
  if missing then return {'bounds', missing, num(now)} end
  reclaim_expired(P, num(now))
  local flat = redis.call('HGETALL', skey(scope))
  local totals = {}
  for i = 1, #flat, 2 do
    local kind, dim = string.match(flat[i], '^([uh]):(.+)$')
    if kind then
      totals[#totals + 1] = flat[i]
      totals[#totals + 1] = flat[i + 1]
    end
  end
  return {totals, flatten(states({scope}, nil))}
end

if op == 'set_limit' then
  -- ARGV: 4 scope, 5 dim, 6 wkey, 7 max
  redis.call('HSET', lkey(ARGV[4]), ARGV[5] .. '|' .. ARGV[6], ARGV[7])
  bump_limits_version()
  return {'ok'}
end

if op == 'remove_limit' then
  local scope, dim, wkey = ARGV[4], ARGV[5], ARGV[6]
  local removed = redis.call('HDEL', lkey(scope), dim .. '|' .. wkey)
  bump_limits_version()
  local s = skey(scope)
  local id = dim .. '|' .. wkey
  local oldest = redis.call('HGET', s, 'mh:' .. id)
  if oldest then
    for index = tonumber(oldest), tonumber(redis.call('HGET', s, 'ml:' .. id)) do
      redis.call('HDEL', s, 'b:' .. id .. '|' .. index)
    end
  end
  redis.call('HDEL', s, 'm:' .. id, 'ms:' .. id, 'me:' .. id, 'mh:' .. id, 'ml:' .. id, 'pt:' .. id)
  return {removed}
end

return redis.error_reply('budgeteer: unknown operation ' .. tostring(op))
