-- GCRA (the generic cell rate algorithm, as the governor crate implements it) for several buckets
-- at once, atomically, on the Redis server's clock.
--
-- KEYS[i]       a bucket: its theoretical arrival time (TAT, µs since the epoch) is stored there
-- ARGV[2i-1]    T: the emission interval of bucket i (µs, >= 1)
-- ARGV[2i]      tau: its tolerance, T * (burst - 1) (µs)
-- ARGV[2n+1]    optional: 'peek' answers the same verdicts and consumes nothing (asking for an
--               approval is checked against the limits the request will meet, without spending them)
--
-- Returns one integer per bucket: 0 admits, > 0 refuses and is the wait in µs (at most T). The
-- buckets are written only if every one admits (a refused request consumes nothing), each with an
-- expiry at the moment it is full again, so Redis keeps nothing for idle clients.
--
-- No admission leaves a TAT beyond now + tau + T. A stored one further ahead (the server's clock
-- went back, or the key was written by hand) is read as that latest possible TAT, and written back
-- as such even when the request is refused: otherwise its wait could be years, or too large for an
-- integer reply (Redis turns it into a negative number).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local peek = ARGV[2 * #KEYS + 1] == 'peek'
local tats, waits, repaired, refused = {}, {}, {}, false
for i = 1, #KEYS do
  local key = KEYS[i]
  local T, tau = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  -- A key repeated in one call sees its earlier (tentative) update.
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key))
    -- Not a number (or NaN): a fresh bucket.
    if tat == nil or tat ~= tat then tat = now end
    local latest = now + tau + T
    if tat > latest then
      tat = latest
      repaired[key] = latest
    end
  end
  local earliest = tat - tau
  if now < earliest then
    waits[i] = earliest - now
    refused = true
  else
    waits[i] = 0
    tats[key] = math.max(tat, now) + T
  end
end
local function store(key, tat)
  -- '%d': a bare Lua number is sent as '%.14g' and would lose the microseconds.
  redis.call('SET', key, string.format('%d', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
if refused or peek then
  for key, tat in pairs(repaired) do store(key, tat) end
else
  for key, tat in pairs(tats) do store(key, tat) end
end
return waits
