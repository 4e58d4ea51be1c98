"""The Lua scripts behind `live.LiveState`: every change to a pod's memory accounting,
its copies and its view version happens inside one of these, atomically (see store/live.py
for the invariants they keep and the key layout they work on).

KEYS of the copy scripts (reserve, settle, release, adopt), as `LiveState._keys` builds
them: [pod hash, pod alloc hash, model copies hash, view counter, heads hash], plus the
pod's released-copies hash for release and adopt.

May import: `routing.log` (its Lua fragment) only. Never imports the use cases.
"""

from meshserve.scheduler.routing.log import LUA

# Placement's views of a pod are versioned: every script that changes what placement sees
# of a pod gives it a new `view_version` (placement/views.py keeps views between decisions and reads
# again only pods whose version moved). Versions come from one counter (`ms:view_seq`, KEYS[4]
# of the copy scripts) that starts at the server's clock in microseconds, so a pod removed
# and registered again, or a Redis that lost its data, never repeats a version a reader
# holds. `ms:heads` (KEYS[5]) holds every registered pod's "<view version>:<heartbeat ms>",
# so a reader checks 1,000 pods with one HGETALL instead of a read of each pod's hash.
VIEW = """
-- the pod's entry in the heads hash, from its hash (none without a capacity)
local function write_head(pod_key, heads_key, pod)
  local h = redis.call('HMGET', pod_key, 'capacity', 'view_version', 'heartbeat_ms')
  if h[1] then
    redis.call('HSET', heads_key, pod, (h[2] or '0') .. ':' .. (h[3] or '0'))
  else
    redis.call('HDEL', heads_key, pod)
  end
end

local function new_view(pod_key, seq_key, heads_key, pod)
  if redis.call('EXISTS', seq_key) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', seq_key, t[1] .. string.format('%06d', tonumber(t[2])))
  end
  redis.call('HSET', pod_key, 'view_version', redis.call('INCR', seq_key))
  write_head(pod_key, heads_key, pod)
end
"""

RESERVE = VIEW + """
local cap = tonumber(redis.call('HGET', KEYS[1], 'capacity') or '-1')
if cap < 0 then return {0, 'pod-gone'} end
if ARGV[5] == '1' and redis.call('HLEN', KEYS[3]) > 0 then return {0, 'exists'} end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return {0, 'exists-on-pod'} end
local alloc = tonumber(redis.call('HGET', KEYS[1], 'allocated') or '0')
local loading = tonumber(redis.call('HGET', KEYS[1], 'loading') or '0')
local maxl = tonumber(redis.call('HGET', KEYS[1], 'max_loading') or '1')
local bytes = tonumber(ARGV[3])
if alloc + bytes > cap then return {0, 'no-room'} end
if loading >= maxl then return {0, 'busy'} end
redis.call('HINCRBY', KEYS[1], 'allocated', bytes)
redis.call('HINCRBY', KEYS[1], 'loading', 1)
redis.call('HSET', KEYS[2], ARGV[1], bytes)
redis.call('HSET', KEYS[3], ARGV[2], 'loading:' .. ARGV[4])
new_view(KEYS[1], KEYS[4], KEYS[5], ARGV[2])
return {1, 'ok'}
"""

SETTLE = LUA + VIEW + """
local state = redis.call('HGET', KEYS[3], ARGV[2])
if not state or string.sub(state, 1, 8) ~= 'loading:' then return 0 end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local bytes = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'allocated', bytes - old)
redis.call('HINCRBY', KEYS[1], 'loading', -1)
redis.call('HSET', KEYS[2], ARGV[1], bytes)
redis.call('HSET', KEYS[3], ARGV[2], 'loaded:' .. ARGV[4])
new_view(KEYS[1], KEYS[4], KEYS[5], ARGV[2])
log_change('+', ARGV[1], ARGV[2])
routes_logged(ARGV[5])
return 1
"""

RELEASE = LUA + VIEW + """
local state = redis.call('HGET', KEYS[3], ARGV[2])
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  redis.call('HINCRBY', KEYS[1], 'allocated', -tonumber(old))
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if state and string.sub(state, 1, 8) == 'loading:' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'loading', -1)
end
redis.call('HDEL', KEYS[3], ARGV[2])
if not state then return 0 end
-- a report the pod sent before it unloaded this copy must not adopt it again (ADOPT)
redis.call('HSET', KEYS[6], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[6], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then new_view(KEYS[1], KEYS[4], KEYS[5], ARGV[2]) end
if string.sub(state, 1, 7) == 'loaded:' then
  log_change('-', ARGV[1], ARGV[2])
  routes_logged(ARGV[3])
end
return 1
"""

# adopt a copy a pod reports as loaded that Redis does not know (after a Redis restart),
# unless this scheduler released it there within RELEASED_GRACE_MS (a report sent before the
# pod's unload finished would otherwise bring back a drained or evicted copy)
ADOPT = LUA + VIEW + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
local released = redis.call('HGET', KEYS[6], ARGV[1])
if released and tonumber(ARGV[4]) - tonumber(released) < tonumber(ARGV[6]) then return 0 end
local bytes = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'allocated', bytes)
redis.call('HSET', KEYS[2], ARGV[1], bytes)
redis.call('HSET', KEYS[3], ARGV[2], 'loaded:' .. ARGV[4])
new_view(KEYS[1], KEYS[4], KEYS[5], ARGV[2])
log_change('+', ARGV[1], ARGV[2])
routes_logged(ARGV[5])
return 1
"""

# requests counted with exponential ageing: hits decay by 2^(-dt / half-life)
AGE_USAGE = """
local hits = tonumber(redis.call('HGET', KEYS[1], 'hits') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last_used_ms') or ARGV[2])
local now = tonumber(ARGV[2])
local dt = now - last
if dt < 0 then dt = 0 end
hits = hits * math.pow(2, -dt / tonumber(ARGV[3])) + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'hits', tostring(hits), 'last_used_ms', ARGV[2])
return 1
"""

# forget the request counts (a shift of the popular set): hits = 0 where the usage hash
# still exists (a model unregistered meanwhile is not brought back); returns how many
RESET_HITS = """
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then
    redis.call('HSET', k, 'hits', '0')
    n = n + 1
  end
end
return n
"""

# forget a pod: drop it from every copy set it appears in (one P entry in the route log
# says so). ARGV[1]: pod id, ARGV[2]: key prefix.
REMOVE_POD = LUA + """
local P = ARGV[2]
local models = redis.call('HKEYS', KEYS[2])
for _, m in ipairs(models) do
  redis.call('HDEL', P .. ':copies:' .. m, ARGV[1])
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
log_change('P', ARGV[1])
routes_logged(P)
return models
"""

# a pod's heartbeat: write its fields; log its addresses when it is new to the pods set
# or they changed; bump its view version when a field other than the heartbeat's clock
# and memory reading changed. KEYS: pod hash, pods set, view counter, heads. ARGV[1]: pod id, ARGV[2]: key
# prefix, then field, value pairs. Returns 1 when the pod hash existed before.
UPSERT_POD = LUA + VIEW + """
local VIEW = {'capacity', 'grpc_address', 'rest_address', 'runtime', 'labels', 'management_address',
              'max_loading', 'default_size', 'started_ms'}
local existed = redis.call('EXISTS', KEYS[1])
local before = redis.call('HMGET', KEYS[1], unpack(VIEW))
local member = redis.call('SISMEMBER', KEYS[2], ARGV[1])
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
redis.call('HSETNX', KEYS[1], 'allocated', 0)
redis.call('HSETNX', KEYS[1], 'loading', 0)
redis.call('SADD', KEYS[2], ARGV[1])
local after = redis.call('HMGET', KEYS[1], unpack(VIEW))
local changed = member == 0
for i = 1, #VIEW do
  if before[i] ~= after[i] then changed = true end
end
if changed then new_view(KEYS[1], KEYS[3], KEYS[4], ARGV[1]) end
write_head(KEYS[1], KEYS[4], ARGV[1])
if after[1] and (member == 0 or not before[1] or before[2] ~= after[2] or before[3] ~= after[3]) then
  local grpc = after[2] or ''
  log_change('A', ARGV[1], #grpc .. ':' .. grpc .. (after[3] or ''))
  routes_logged(ARGV[2])
end
return existed
"""

# draining on or off. KEYS: pod hash, view counter, heads. ARGV[1]: "1" | "0", ARGV[2]: pod id.
SET_DRAINING = VIEW + """
redis.call('HSET', KEYS[1], 'draining', ARGV[1])
new_view(KEYS[1], KEYS[2], KEYS[3], ARGV[2])
return 1
"""

# placement's view of some pods, read atomically in one round trip: for each pod its
# hash, its allocations and its copy state for each allocated model; then the usage of
# every model seen. KEYS: pod hash and alloc hash of each pod, in pairs, in ARGV order.
# ARGV[1]: copies key prefix, ARGV[2]: usage key prefix, ARGV[3..]: the pod ids. The
# copies and usage keys are built from the prefixes (not declared), like `REMOVE_POD`.
PLACEMENT_SNAPSHOT = """
local pods, usage, seen = {}, {}, {}
for i = 3, #ARGV do
  local pod = ARGV[i]
  local info = redis.call('HGETALL', KEYS[2 * (i - 3) + 1])
  local alloc = redis.call('HGETALL', KEYS[2 * (i - 3) + 2])
  local states = {}
  for j = 1, #alloc, 2 do
    local m = alloc[j]
    states[#states + 1] = redis.call('HGET', ARGV[1] .. m, pod) or ''
    if not seen[m] then
      seen[m] = true
      local u = redis.call('HMGET', ARGV[2] .. m, 'hits', 'last_used_ms')
      usage[#usage + 1] = {m, u[1] or '', u[2] or ''}
    end
  end
  pods[#pods + 1] = {info, alloc, states}
end
return {pods, usage}
"""
