"""The route log: every change that can move a route, in the order it happened.

Routers learn where models live from the scheduler's `WatchRoutes` stream. Each Redis
script that changes what routes are made of also appends, in the same atomic step, a
small entry saying what changed; a Lua script cannot interleave with another, so the
order of the log is the order of the state changes, whichever scheduler replica made
them. Each scheduler process keeps one in-memory route table (`routing/table.py`) that it
loads once and then keeps current from the log (`routing/hub.py`): computing 10,000 changed
routes is a few Python set operations and the encoding of their bytes, instead of
reading them back from Redis.

Entries are three list elements each, `kind, a, b` (b empty when unused):
  +  model pod        a copy became loaded (settle, adopt)
  -  model pod        a loaded copy is gone (release)
  P  pod              a pod is gone, and every copy on it (remove_pod)
  A  pod addresses    a pod registered, or its addresses changed (upsert_pod); addresses
                      is `<length of grpc>:<grpc><rest>` (any bytes in either)
  M  pod limit        the pod's per-copy concurrency limit changed (decimal; 0 = none), as
                      its routes' `Endpoint.max_concurrency` (store/pod_keys.py)
  R  model            a model was registered (followed by a + for each loaded copy)
  U  model            a model was unregistered
  V  vmodel model     a vmodel points at a model
  X  vmodel           a vmodel was deleted
Route hubs read them as bytes, undecoded (ids are compared as bytes; they are UTF-8).
Every entry states the value of what it touches as of its own time, so replaying the
entries after a position onto any state read later than that position ends at the
truth: that is how a table is loaded without stopping writers (position first, then the
state chunk by chunk, then the entries after the position).

Positions are (epoch, sequence). The sequence counts entries; the log keeps the last
`LOG_LENGTH`. A reader behind the start of the log, or whose epoch is no longer the
log's (Redis restarted and lost it, or the registry mirror was rebuilt), loads the
table again and sends routers a snapshot.

Wake-ups: a stream holding only its latest entry (XADD MAXLEN 1). A reader blocked on it
(XREAD BLOCK) wakes once for any number of changes; pub/sub would cost the reader a
message each (~40 us in redis-py: 400 ms for 10,000 changes). It is only a hint: the
reader also reads the log every poll interval.

Keys (prefix `ms`): ms:routelog (the list), ms:routelog:seq (entries appended in this
epoch), ms:routelog:epoch, ms:routelog:wake (the wake-up stream). The scripts build the
keys they touch from the prefix (not declared), so they need a single Redis, not a cluster.

May import: `meshserve.common`, redis and the store's connection. Never imports the use
cases or the transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from meshserve.scheduler.store.connection import connect

LOG_LENGTH = 50_000
"""Entries kept in the log; a reader further behind than this loads its table again."""

ENTRY = 3
"""List elements per entry (`kind, a, b`); the Lua below is written with it too."""

# Shared by every script that logs or reads the log. `log_change(kind, a, b)` queues
# an entry; `routes_logged(P)` appends what was queued, trims the log and wakes the
# readers, once per script run (P: the key prefix); `log_where(P)` says where it is.
LUA = """
local pending = {}

local function log_change(kind, a, b)
  pending[#pending + 1] = kind
  pending[#pending + 1] = a or ''
  pending[#pending + 1] = b or ''
end

local function log_epoch(P)
  local epoch = redis.call('GET', P .. ':routelog:epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. '.' .. t[2]
    redis.call('SET', P .. ':routelog:epoch', epoch)
  end
  return epoch
end

-- the log's epoch, sequence and the sequence of its first entry
local function log_where(P)
  local epoch = log_epoch(P)
  local seq = tonumber(redis.call('GET', P .. ':routelog:seq') or '0')
  return epoch, seq, seq - redis.call('LLEN', P .. ':routelog') / ENTRY + 1
end

local function routes_logged(P)
  log_epoch(P)
  local seq = redis.call('INCRBY', P .. ':routelog:seq', #pending / ENTRY)
  for lo = 1, #pending, 999 do
    redis.call('RPUSH', P .. ':routelog', unpack(pending, lo, math.min(lo + 998, #pending)))
  end
  pending = {}
  local n = redis.call('LLEN', P .. ':routelog')
  if n > ENTRY * (LOG_LENGTH + LOG_LENGTH / 4) then
    redis.call('LTRIM', P .. ':routelog', n - ENTRY * LOG_LENGTH, -1)
    redis.call('INCR', P .. ':routelog:trims')
  end
  redis.call('XADD', P .. ':routelog:wake', 'MAXLEN', '1', '*', 'seq', seq)
end
""".replace("LOG_LENGTH", str(LOG_LENGTH)).replace("ENTRY", str(ENTRY))

# Log entries made by plain commands in the same MULTI (registration, vmodels).
# ARGV[1]: prefix, then (kind, a, b) triples; an R also logs the model's loaded copies.
_LOG = LUA + """
local P = ARGV[1]
for i = 2, #ARGV, 3 do
  log_change(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if ARGV[i] == 'R' then
    local copies = redis.call('HGETALL', P .. ':copies:' .. ARGV[i + 1])
    for j = 1, #copies, 2 do
      if string.sub(copies[j + 1], 1, 7) == 'loaded:' then log_change('+', ARGV[i + 1], copies[j]) end
    end
  end
end
routes_logged(P)
return redis.call('GET', P .. ':routelog:seq')
"""

# A new epoch with an empty log: every reader loads its table again. ARGV[1]: prefix.
_RESET = LUA + """
local P = ARGV[1]
redis.call('DEL', P .. ':routelog', P .. ':routelog:epoch')
routes_logged(P)
return log_epoch(P)
"""

# The entries after a position. ARGV: prefix, epoch, sequence, most entries to return.
# Returns {epoch, sequence after the entries returned, 'ok' | 'reload', entries}:
# 'reload' when the position is not in the log (other epoch, trimmed, or ahead of it).
_READ = LUA + """
local P, after, most = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local epoch, seq, first = log_where(P)
if ARGV[2] ~= epoch then return {epoch, seq, 'reload', {}} end
if after > seq or after + 1 < first then return {epoch, seq, 'reload', {}} end
local count = math.min(seq - after, most)
if count <= 0 then return {epoch, seq, 'ok', {}} end
local lo = ENTRY * (after + 1 - first)
return {epoch, after + count, 'ok', redis.call('LRANGE', P .. ':routelog', lo, lo + ENTRY * count - 1)}
""".replace("ENTRY", str(ENTRY))

# Where the log is: {epoch, sequence, sequence of its first entry, trims so far}. A reader
# then takes the entries it wants by index with a plain LRANGE, in a MULTI that checks
# the epoch and trims again (appending does not move an index; trimming does). Returning
# the entries from a script would cost ~2.5 times more: Lua's tables are converted one
# element at a time. ARGV[1]: prefix.
_WHERE = LUA + """
local epoch, seq, first = log_where(ARGV[1])
return {epoch, seq, first, redis.call('GET', ARGV[1] .. ':routelog:trims') or '0'}
"""

# Scripts reading many models take the ids as ONE argument, joined by newlines (redis-py
# packs each argument in Python: ~2 us apiece, 20 ms for 10,000 ids), or one argument
# each when an id contains a newline (ids are only limited in length). ARGV[first - 1]:
# "1" joined, "0" one each; the ids follow.
_IDS = """
local function ids_of(argv, first)
  local ids = {}
  if argv[first - 1] == '1' then
    local s, pos = argv[first], 1
    while true do
      local nl = string.find(s, '\\n', pos, true)
      if not nl then ids[#ids + 1] = string.sub(s, pos); return ids end
      ids[#ids + 1] = string.sub(s, pos, nl - 1)
      pos = nl + 1
    end
  end
  for i = first, #argv do ids[#ids + 1] = argv[i] end
  return ids
end
"""


def _id_args(ids: Sequence[bytes]) -> list[bytes]:
    """`ids` as `_IDS` takes them: joined by newlines when none holds one."""
    joined = b"\n".join(ids)
    if joined.count(b"\n") == len(ids) - 1:
        return [b"1", joined]
    return [b"0", *ids]


# Loading a table: the pods holding a loaded copy of each model asked, as flat
# {model, pod, model, pod, ...}. ARGV[1]: copies key prefix, then the ids as `_IDS`.
_LOADED = _IDS + """
local out = {}
for _, m in ipairs(ids_of(ARGV, 3)) do
  local copies = redis.call('HGETALL', ARGV[1] .. m)
  for j = 1, #copies, 2 do
    if string.sub(copies[j + 1], 1, 7) == 'loaded:' then
      out[#out + 1] = m
      out[#out + 1] = copies[j]
    end
  end
end
return out
"""

# Every registered pod (in the set, with a capacity: a hash without one is left out) with
# some fields of its hash, flat {pod, field, ..., pod, ...}; a missing field reads ''.
# ARGV[1]: prefix, ARGV[2..]: the fields.
POD_FIELDS = """
local out = {}
for _, pod in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':pods')) do
  local a = redis.call('HMGET', ARGV[1] .. ':pod:' .. pod, 'capacity', unpack(ARGV, 2))
  if a[1] then
    out[#out + 1] = pod
    for i = 2, #a do out[#out + 1] = a[i] or '' end
  end
end
return out
"""


@dataclass(frozen=True)
class Position:
    epoch: str
    seq: int


@dataclass(frozen=True)
class Entries:
    position: Position               # after these entries
    reload: bool                     # the position asked for is not in the log any more
    flat: list[bytes]                # kind, a, b of each entry, in log order

    @property
    def count(self) -> int:
        return len(self.flat) // ENTRY


@dataclass(frozen=True)
class TableState:
    """What a route table is loaded from (see `RouteLog.load`); ids as bytes, as the log's."""

    position: Position
    models: list[bytes]                  # registered model ids
    loaded: list[tuple[bytes, bytes]]    # (model, pod) of every loaded copy of those models
    pods: list[tuple[str, str, str, int]]  # (pod id, gRPC, REST address, concurrency limit) of registered pods
    vmodels: dict[str, str]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RouteLog:
    """Appends to and reads the route log and the state a route table is loaded from. It
    reads through its own client (`url`), which leaves replies undecoded: the hub keeps
    ids as the bytes the log holds (decoding 30,000 strings per 10,000 entries costs more
    than the rest of reading them)."""

    def __init__(self, url: str, *, prefix: str = "ms") -> None:
        self.p = prefix
        self._url = url
        self.redis: aioredis.Redis = connect(url, decode=False, max_connections=16)
        self._log = self.redis.register_script(_LOG)
        self._reset = self.redis.register_script(_RESET)
        self._read = self.redis.register_script(_READ)
        self._where = self.redis.register_script(_WHERE)
        self._loaded = self.redis.register_script(_LOADED)
        self._pods = self.redis.register_script(POD_FIELDS)

    async def close(self) -> None:
        await self.redis.aclose()

    def waiter(self) -> Waiter:
        """A wake-up listener (its own connection: it blocks)."""
        return Waiter(self._url, key=f"{self.p}:routelog:wake")

    async def log(self, changes: Sequence[tuple[str, str, str]], *, pipe: Pipeline | None = None) -> None:
        """Append entries (kind, a, b), or queue that on `pipe` (a MULTI holding the change
        they describe). Changes made by the copy scripts are logged by those scripts."""
        if changes:
            args = [self.p, *(field for change in changes for field in change)]
            await self._log(keys=[], args=args, client=pipe)

    async def reset(self, *, pipe: Pipeline) -> None:
        """Queue on `pipe` the start of a new epoch with an empty log: every reader will
        load its table again."""
        await self._reset(keys=[], args=[self.p], client=pipe)

    async def position(self) -> Position:
        epoch, seq, _, _ = await self._where(keys=[], args=[self.p])
        return Position(_text(epoch), int(seq))

    async def read(self, after: Position, *, most: int = 20_000, attempts: int = 3) -> Entries:
        """Up to `most` entries after `after` (see `_WHERE`; after `attempts` spoilt by a
        trim, one atomic script that returns them itself)."""
        for _ in range(attempts):
            raw_epoch, seq, first, trims = await self._where(keys=[], args=[self.p])
            epoch, seq, first = _text(raw_epoch), int(seq), int(first)
            if epoch != after.epoch or after.seq > seq or after.seq + 1 < first:
                return Entries(Position(epoch, seq), True, [])
            count = min(seq - after.seq, most)
            if count <= 0:
                return Entries(Position(epoch, seq), False, [])
            lo = ENTRY * (after.seq + 1 - first)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(f"{self.p}:routelog:epoch")
                pipe.get(f"{self.p}:routelog:trims")
                pipe.lrange(f"{self.p}:routelog", lo, lo + ENTRY * count - 1)
                epoch_now, trims_now, flat = await pipe.execute()
            if epoch_now == raw_epoch and (trims_now or b"0") == trims and len(flat) == ENTRY * count:
                return Entries(Position(epoch, after.seq + count), False, flat)
        epoch, seq, status, flat = await self._read(keys=[], args=[self.p, after.epoch, after.seq, most])
        position = Position(_text(epoch), int(seq))
        if _text(status) == "reload":
            return Entries(position, True, [])
        return Entries(position, False, flat)

    async def load(self, *, chunk: int = 5_000) -> TableState:
        """The position, then the state after it, chunk by chunk (writers are not stopped:
        the entries after the position are to be replayed on top)."""
        position = await self.position()
        models: list[bytes] = sorted(await self.redis.smembers(f"{self.p}:models"))
        loaded: list[tuple[bytes, bytes]] = []
        for lo in range(0, len(models), chunk):
            flat = await self._loaded(keys=[], args=[f"{self.p}:copies:", *_id_args(models[lo : lo + chunk])])
            loaded += zip(flat[::2], flat[1::2], strict=True)
        flat = [
            _text(x) for x in await self._pods(keys=[], args=[self.p, "grpc_address", "rest_address", "max_concurrency"])
        ]
        pods = [
            (pod, grpc, rest, int(limit or 0))
            for pod, grpc, rest, limit in zip(flat[::4], flat[1::4], flat[2::4], flat[3::4], strict=True)
        ]
        vmodels = {_text(v): _text(m) for v, m in (await self.redis.hgetall(f"{self.p}:vmodels")).items()}
        return TableState(position, models, loaded, pods, vmodels)


class Waiter:
    """Blocks until the route log's wake-up stream has an entry newer than the last one
    seen (or `seconds` pass). The first call returns at once when any entry exists."""

    def __init__(self, url: str, *, key: str) -> None:
        # no socket timeout (redis-py's default of 5 s would cut a longer XREAD BLOCK):
        # each wait is bounded by its own deadline instead
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, single_connection_client=True, decode_responses=True, socket_connect_timeout=3, socket_timeout=None
        )
        self.key = key
        self.last = "0-0"

    async def wait(self, seconds: float) -> bool:
        """True when woken by a change, False when `seconds` passed without one."""
        async with asyncio.timeout(seconds + 5.0):
            reply = await self.redis.xread({self.key: self.last}, block=max(1, int(seconds * 1000)))
        if not reply:
            return False
        self.last = reply[0][1][-1][0]
        return True

    async def close(self) -> None:
        await self.redis.aclose()
