-- The rules every Redis script of budgeteer shares, in one place: backends/redis.py puts this
-- text before each script's own (ledger.lua, reserve.lua, commit.lua, admit.lua) when it loads
-- it, so the script's SHA is that of the two together. Local functions only, and few: Redis runs
-- a script's whole chunk on every call, so each one defined here is paid by every call.

-- A number as text that reads back the same (a bare number reply or argument may be rounded).
local function num(x) return string.format('%.17g', x) end

-- The server's clock as the text seconds, sep, micros: with '.' a time (one strtod, when read,
-- gives the number), with '' a limits version unique across a flush.
local function server_time_text(sep)
  local t = redis.call('TIME')
  return t[1] .. sep .. string.sub('00000' .. t[2], -6)
end

-- The limits of every scope on path (top first), read from P:l:<scope>: returns the version
-- (version, or a new one when P:lv is unset), every limit as quadruples scope number (1 = top),
-- dim, window key, max, in ledger.lua's order (by scope, then by "dim|window"), and the same
-- quadruples for the dims in wanted alone, but pacing ones when skip_pacing.
local function read_limits(P, path, version, wanted, skip_pacing)
  if not version then  -- unique across a flush, so no client mistakes a new set for an old one
    version = server_time_text('')
    redis.call('SET', P .. ':lv', version)
  end
  local learned, R = {}, {}
  local k, scope = 0, nil
  for segment in string.gmatch(path, '[^/]+') do
    k, scope = k + 1, scope and (scope .. '/' .. segment) or segment
    local flat = redis.call('HGETALL', P .. ':l:' .. scope)
    local fields = {}
    for i = 1, #flat, 2 do fields[#fields + 1] = {flat[i], tonumber(flat[i + 1])} end
    if #fields > 1 then table.sort(fields, function(a, b) return a[1] < b[1] end) end
    for _, f in ipairs(fields) do
      local bar = string.find(f[1], '|', 1, true)
      local row = {k, string.sub(f[1], 1, bar - 1), string.sub(f[1], bar + 1), f[2]}
      for j = 1, 4 do learned[#learned + 1] = row[j] end
      if wanted[row[2]] and not (skip_pacing and string.sub(row[3], 1, 7) == 'pacing:') then
        for j = 1, 4 do R[#R + 1] = row[j] end
      end
    end
  end
  return version, learned, R
end

-- Calendar windows whose period has ended need bounds from the client, checked before any write
-- (a script that fails keeps its writes). Among the quadruples R[first .. last], returns the
-- client's bounds ("key=start:end;..." in bounds_text) as a table, parsed once a calendar window
-- is met (else nil), and the first calendar window that needs bounds it lacks (else nil);
-- hashes[offset + scope number] is the hash of that scope.
local function calendar_check(R, first, last, hashes, offset, bounds_text, now)
  local bounds
  for i = first, last, 4 do
    local wkey = R[i + 2]
    if string.sub(wkey, 1, 9) == 'calendar:' then
      if not bounds then
        bounds = {}
        for key, start, stop in string.gmatch(bounds_text, '([^=;]+)=([^:;]+):([^;]+)') do
          bounds[key] = {tonumber(start), tonumber(stop)}
        end
      end
      local stop = redis.call('HGET', hashes[offset + R[i]], 'me:' .. R[i + 1] .. '|' .. wkey)
      local b = bounds[wkey]
      if now >= (tonumber(stop) or 0) and (not b or now < b[1] or now >= b[2]) then
        return bounds, wkey
      end
    end
  end
  return bounds, nil
end

-- A rolling window's refresh (budgeteer.ledger._core): drop the buckets b:<field>|<index> that
-- have left the window, lower the meter's used m: by them, move the oldest-bucket mark mh:, and
-- clear both marks when every bucket has left. s is the scope's hash, field "<dim>|<window>";
-- used, oldest, newest are m:, mh:, ml: as read (oldest nil: no bucket). Returns them as now.
local function refresh_rolling(s, field, now, gran, buckets, used, oldest, newest)
  local cutoff = math.floor(now / gran) - buckets
  if not oldest or oldest >= cutoff then return used, oldest, newest end
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
    return 0, nil, nil
  end
  redis.call('HSET', s, 'mh:' .. field, cutoff, 'm:' .. field, used)
  return used, cutoff, newest
end

-- Add amount to a rolling window's bucket for now (to the newest one if the clock stepped back)
-- and move the newest-bucket mark ml: (and mh:, when the window had no bucket); oldest, newest
-- as refresh_rolling returned them. The meter m: is the caller's: `...` are more field, value
-- pairs for the same HSET.
local function add_to_bucket(s, field, now, gran, oldest, newest, amount, ...)
  local index = math.floor(now / gran)
  if newest and newest >= index then index = newest end
  redis.call('HINCRBY', s, 'b:' .. field .. '|' .. index, amount)
  if oldest then
    redis.call('HSET', s, 'ml:' .. field, index, ...)
  else
    redis.call('HSET', s, 'ml:' .. field, index, 'mh:' .. field, index, ...)
  end
end

-- Reclaim the holds of hierarchy P whose expiry is at or before now_text, up to 256 at a time:
-- free what each held on every scope of its path and record its id as expired (kept 7 days).
local function reclaim_expired(P, now_text)
  local holds = P .. ':holds'
  local due = redis.call('ZRANGEBYSCORE', P .. ':expiry', '-inf', now_text, 'LIMIT', 0, 256)
  for _, hid in ipairs(due) do
    local hold = redis.call('HGET', holds, hid)
    if hold then
      local hpath, _, _, held = string.match(hold, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
      local acc
      for segment in string.gmatch(hpath, '[^/]+') do
        acc = acc and (acc .. '/' .. segment) or segment
        for dim, amount in string.gmatch(held, '([^=,]+)=(%d+)') do
          if amount ~= '0' then
            redis.call('HINCRBY', P .. ':s:' .. acc, 'h:' .. dim, '-' .. amount)
          end
        end
      end
      redis.call('HDEL', holds, hid)
      redis.call('HSET', P .. ':r:' .. hid, 'state', 'expired', 'path', hpath)
      redis.call('EXPIRE', P .. ':r:' .. hid, 7 * 86400)
    end
    redis.call('ZREM', P .. ':expiry', hid)
  end
end
