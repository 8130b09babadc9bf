-- budgeteer's admit (a checked charge) on Redis: the rate limiter's hot path, in one round trip.
--
-- The same operation as `admit` in ledger.lua, on the same keys and fields (see its header),
-- for the common case only: paths whose limits are lifetime, rolling or pacing, with no hold
-- due for reclaiming. Anything else answers {'fallback'} before writing, and the client runs
-- ledger.lua's admit instead. Kept apart because a Redis script pays for its whole chunk on
-- every call: ledger.lua's twenty-odd local functions cost more than this whole check.
--
-- KEYS[1] the hierarchy's key prefix; ARGV: 1 "now" or "" (server TIME), 2 the number of
-- limits the caller expects on the path (-1: any), 3 the number of dimensions D, then D pairs
-- dim, amount, then the path's scopes, top first. (Pre-split by the client: string work in a
-- script costs as much as a command.)

local P = KEYS[1]
local now = tonumber(ARGV[1] ~= '' and ARGV[1] or server_time_text('.'))

local first = redis.call('ZRANGE', P .. ':expiry', 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= now then
  return {'fallback'}  -- a hold is due: ledger.lua reclaims it first
end

local amounts, order = {}, {}
local dims = tonumber(ARGV[3])
for i = 4, 2 + 2 * dims, 2 do
  amounts[ARGV[i]] = tonumber(ARGV[i + 1])
  order[#order + 1] = ARGV[i]
end
local scopes = {}
for i = 4 + 2 * dims, #ARGV do scopes[#scopes + 1] = ARGV[i] end

-- Read every limit on the requested dims: {scope, dim, wkey, max, used, held, kind, extra...}.
local rows, count = {}, 0
for _, scope in ipairs(scopes) do
  local flat = redis.call('HGETALL', P .. ':l:' .. scope)
  count = count + #flat / 2
  local limits = {}
  for i = 1, #flat, 2 do limits[#limits + 1] = {flat[i], tonumber(flat[i + 1])} end
  if #limits > 1 then table.sort(limits, function(a, b) return a[1] < b[1] end) end
  for _, limit in ipairs(limits) do
    local id, max = limit[1], limit[2]
    local dim, wkey = string.match(id, '^([^|]+)|(.+)$')
    if amounts[dim] then
      rows[#rows + 1] = {scope, dim, wkey, max, id}
    end
  end
end
local expect = tonumber(ARGV[2])
if expect >= 0 and count ~= expect then return {'stale'} end

local paced = {}
for _, row in ipairs(rows) do
  local scope, dim, wkey, max, id = row[1], row[2], row[3], row[4], row[5]
  local s = P .. ':s:' .. scope
  local requested = amounts[dim]
  if wkey == 'lifetime' then
    local c = redis.call('HMGET', s, 'u:' .. dim, 'h:' .. dim)
    local used, held = tonumber(c[1] or '0'), tonumber(c[2] or '0')
    if used + held + requested > max then
      return {'deny', scope, dim, wkey, max, used, held, requested, ''}
    end
    row[6], row[7], row[8] = used + requested, held, 'lifetime'
  else
    local seconds, gran = string.match(wkey, '^rolling:(%d+):(%d+)$')
    if seconds then
      seconds, gran = tonumber(seconds), tonumber(gran)
      local buckets = seconds / gran
      local c = redis.call('HMGET', s, 'h:' .. dim, 'm:' .. id, 'mh:' .. id, 'ml:' .. id)
      local held = tonumber(c[1] or '0')
      local used, oldest, newest = refresh_rolling(s, id, now, gran, buckets, tonumber(c[2] or '0'),
        tonumber(c[3]), tonumber(c[4]))
      if used + held + requested > max then
        local over, freed, wait = used + held + requested - max, 0, ''
        if oldest then
          local fields = {}
          for index = oldest, newest do fields[#fields + 1] = 'b:' .. id .. '|' .. index end
          local amounts_in = redis.call('HMGET', s, unpack(fields))
          for i, amount in ipairs(amounts_in) do
            freed = freed + tonumber(amount or '0')
            if freed >= over then
              wait = num(math.max(0, (oldest + i - 1 + buckets + 1) * gran - now))
              break
            end
          end
        end
        return {'deny', scope, dim, wkey, max, used, held, requested, wait}
      end
      row[6], row[7], row[8], row[9], row[10] = used + requested, held, 'rolling', gran, newest
      row[11] = oldest
    else
      local us = string.match(wkey, '^pacing:(%d+)$')
      if not us then return {'fallback'} end  -- a calendar window: ledger.lua has the bounds
      local refill = tonumber(us) / 1000000
      local tat = tonumber(redis.call('HGET', s, 'pt:' .. id) or '0')
      local level = 0
      if tat > now and max > 0 then
        level = math.min(math.max(math.ceil((tat - now) * max / refill - 1e-4), 0), max)
      end
      -- budgeteer.ledger._core.pace
      if requested > 0 then
        if requested > max then
          return {'deny', scope, dim, wkey, max, level, 0, requested, ''}
        end
        local base = tat
        if now > base then base = now end
        local new_tat = base + requested * refill / max
        local wait = new_tat - refill - now
        if wait > 1e-6 then
          return {'deny', scope, dim, wkey, max, level, 0, requested, num(wait)}
        end
        paced[#paced + 1] = {s, 'pt:' .. id, num(new_tat)}
      end
      row[6], row[7], row[8] = level + requested, 0, 'pacing'
    end
  end
end

-- Every limit admits: record the usage on every scope and in every rolling window.
for _, p in ipairs(paced) do redis.call('HSET', p[1], p[2], p[3]) end
for _, scope in ipairs(scopes) do
  local s = P .. ':s:' .. scope
  for _, dim in ipairs(order) do redis.call('HINCRBY', s, 'u:' .. dim, amounts[dim]) end
end
local reply = {'ok', '', ''}
for _, row in ipairs(rows) do
  if row[8] == 'rolling' then
    local s, id = P .. ':s:' .. row[1], row[5]
    -- row[6] is the refreshed meter plus the amount
    add_to_bucket(s, id, now, row[9], row[11], row[10], amounts[row[2]], 'm:' .. id, row[6])
  end
  for i = 1, 4 do reply[#reply + 1] = row[i] end
  reply[#reply + 1] = row[6]
  reply[#reply + 1] = row[7]
end
return reply
