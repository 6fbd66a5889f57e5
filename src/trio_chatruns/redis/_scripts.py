"""The Lua scripts: every change to a run in Redis is one of these, so each is
atomic (Redis runs a script to completion before any other command).

Each conversation script touches the keys of one conversation only (one
hash tag, one Cluster slot); :data:`INDEX` touches only the cluster-wide
retention index (two keys sharing one slot). Times come from the Redis
server's ``TIME``, so every worker agrees on them. Complexity is given per
script in ``docs/redis.md``.

The conversation scripts share a prelude and its arguments (``ARGV[1..9]``,
built by ``RedisStore._common``): the conversation's key prefix
``<prefix>:{<cid>}:``, the retention in ms (``-1``: keep forever), the extra
time a stream outlives its record (ms), ``max_events_per_run``, the prefix
of the workers' pub/sub channels, the lease in ms, the conversation id,
``max_bytes_per_run`` (``-1``: none), and ``1`` when the workers call
run-end hooks (ends are numbered then). Their own arguments start at
``ARGV[10]``.

Runs of a conversation: the *current* one in ``...:run``; *queued* ones in
``...:q:<run_id>`` hashes, in FIFO order in the list ``...:queue``. A queued
run is *promoted* (made current, ``running``, its owner told over pub/sub
``s<run_id><cid>``) in the script that ends the run before it: the only
place a run starts after waiting. Ended runs that are not current (a queued
run cancelled, a current run replaced) keep their hash at ``...:q:<run_id>``
for the grace time, so their owner can learn how they ended.

Scripts that may end runs of other workers (``START``, ``READ``, ``QUEUED``)
first *reap*: an active or queued run whose owner's lease lapsed is ended
``failed`` there. Every run a script ended for someone else comes back in
its reply as JSON (``[[[field, value, ...], [stream entry, ...]], ...]``,
with ``~index`` = ``1`` when the run stays current and must be indexed for
retention), so the caller does its end's duties (run-end hook with those
frames, retention index) with no further read: the run's keys may be gone
(replaced, evicted) by the time the hook is called.
"""

from __future__ import annotations

__all__ = [
    "EVICT",
    "HOOKED",
    "INDEX",
    "INTERRUPT",
    "INTERRUPTED_JSON",
    "QUEUED",
    "READ",
    "RENEW",
    "START",
    "WRITE",
]

INTERRUPTED_JSON = '{"type":"interrupted"}'
"""The ``{"type": "interrupted"}`` frame as the scripts store it."""

_PRELUDE = r"""
local TERMINAL = {completed = true, failed = true, cancelled = true}
local P = ARGV[1]
local RETENTION_MS = tonumber(ARGV[2])
local GRACE_MS = tonumber(ARGV[3])
local MAXLEN = tonumber(ARGV[4])
local CHANNELS = ARGV[5]
local LEASE_MS = tonumber(ARGV[6])
local CID = ARGV[7]
local BYTE_BUDGET = tonumber(ARGV[8])
local HOOKS = ARGV[9] == '1'
local RUN_KEY = P .. 'run'
local QUEUE_KEY = P .. 'queue'
local INTERRUPTED = '{"type":"interrupted"}'
local ENDED = {}
local FIRST_END_NO = false

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function qkey(id) return P .. 'q:' .. id end
local function fkey(id) return P .. 'frames:' .. id end

local function lapsed(owner, what)
  return 'owner worker ' .. (owner or '?') .. ' stopped renewing its lease ' ..
    '(worker died or lost Redis)' .. what .. '; the run was ended by another worker'
end

-- Drop the oldest frame of a stream; returns its size in bytes (field s).
local function drop_oldest(frames_key)
  local e = redis.call('XRANGE', frames_key, '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', frames_key, e[1])
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 's' then return tonumber(f[i + 1]) end
  end
  return 0
end

-- Append frame seq to a run's stream; when measured (size not false), trim
-- by count and by bytes (the newest frame always stays) right away (unmeasured,
-- WRITE trims the batch once). Returns the run's new byte total.
local function append(frames_key, seq, t, f, size, bytes)
  if not size then
    redis.call('XADD', frames_key, seq .. '-0', 't', t, 'f', f)
    return bytes
  end
  redis.call('XADD', frames_key, seq .. '-0', 't', t, 'f', f, 's', size)
  bytes = bytes + size
  while redis.call('XLEN', frames_key) > MAXLEN do
    bytes = bytes - drop_oldest(frames_key)
  end
  if BYTE_BUDGET >= 0 then
    while bytes > BYTE_BUDGET and redis.call('XLEN', frames_key) > 1 do
      bytes = bytes - drop_oldest(frames_key)
    end
  end
  return bytes
end

-- The conversation's end counter: every end gets the next number, which
-- orders the run-end hooks of the conversation across workers.
local function number_end(key)
  if not HOOKS then return end
  local hooks = P .. 'hooks'
  local n = redis.call('HINCRBY', hooks, 'ended', 1)
  if RETENTION_MS >= 0 then redis.call('PEXPIRE', hooks, RETENTION_MS + GRACE_MS) end
  redis.call('HSET', key, 'end_no', n)
  FIRST_END_NO = FIRST_END_NO or n
end

-- Status, times, end marker after the last frame: what every end writes.
-- by_owner: written by the owner's WRITE (a retry of it is answered 'ok');
-- otherwise by a script that ended the run for others.
local function end_fields(key, run_id, status, err, now, by_owner)
  local latest = redis.call('HGET', key, 'latest_seq') or '0'
  number_end(key)
  redis.call('HSET', key, 'status', status, 'terminated_at', now, 'updated_at', now,
    'ended_by', by_owner and 'owner' or 'other')
  if err then redis.call('HSET', key, 'last_error', err) end
  redis.call('HDEL', key, 'lease_until', 'interrupt')
  redis.call('XADD', fkey(run_id), 'MAXLEN', MAXLEN + 1, latest .. '-1', 'end', status)
end

-- A run that is no longer current keeps its hash at q:<id> for the grace
-- time, and at least a lease: its owner's next renewal finds how it ended.
local function retire(key, id)
  if key ~= qkey(id) then redis.call('RENAME', key, qkey(id)) end
  redis.call('PEXPIRE', qkey(id), math.max(GRACE_MS, LEASE_MS))
  redis.call('PEXPIRE', fkey(id), GRACE_MS)
end

-- End a queued run (its producer never ran): removed from the queue, its
-- owner told (unless told=false: the owner is the one writing it).
local function finish_queued(id, status, err, now, frame, tell)
  local key = qkey(id)
  redis.call('LREM', QUEUE_KEY, 0, id)
  if frame then
    local seq = tonumber(redis.call('HGET', key, 'latest_seq') or '0') + 1
    redis.call('XADD', fkey(id), 'MAXLEN', MAXLEN, seq .. '-0',
      't', string.format('%.3f', now / 1000), 'f', frame, 's', #frame)
    redis.call('HSET', key, 'latest_seq', seq)
  end
  local owner = redis.call('HGET', key, 'owner')
  end_fields(key, id, status, err, now, not tell)
  retire(key, id)
  if tell and owner then
    redis.call('PUBLISH', CHANNELS .. owner, string.sub(status, 1, 1) .. id .. CID)
  end
  if tell then
    local rec = redis.call('HGETALL', key)
    rec[#rec + 1] = '~index'
    rec[#rec + 1] = '0'
    ENDED[#ENDED + 1] = {rec, redis.call('XRANGE', fkey(id), '-', '+')}
  end
end

-- Make the oldest queued run whose owner is alive current; true if one was.
local function promote(now)
  while true do
    local id = redis.call('LPOP', QUEUE_KEY)
    if not id then return false end
    local q = redis.call('HMGET', qkey(id), 'status', 'lease_until', 'owner')
    if q[1] == 'queued' then
      if tonumber(q[2]) < now then
        finish_queued(id, 'failed', lapsed(q[3], ' while its run was queued'), now, false, true)
      else
        local old = redis.call('HGET', RUN_KEY, 'run_id')
        if old then retire(RUN_KEY, old) end
        redis.call('RENAME', qkey(id), RUN_KEY)
        redis.call('HSET', RUN_KEY, 'status', 'running', 'updated_at', now,
          'lease_until', now + LEASE_MS)
        redis.call('PUBLISH', CHANNELS .. q[3], 's' .. id .. CID)
        return true
      end
    end
  end
end

-- End the current run; the next queued run (if any) replaces it at once.
-- Returns true when it was replaced (then it is not retained).
local function finish_current(run_id, status, err, now, tell)
  local entries = false
  end_fields(RUN_KEY, run_id, status, err, now, not tell)
  local rec = false
  if tell then
    rec = redis.call('HGETALL', RUN_KEY)
    entries = redis.call('XRANGE', fkey(run_id), '-', '+')
  end
  local replaced = promote(now)
  if not replaced and RETENTION_MS >= 0 then
    if RETENTION_MS == 0 then
      redis.call('DEL', RUN_KEY)
    else
      redis.call('PEXPIRE', RUN_KEY, RETENTION_MS)
    end
    redis.call('PEXPIRE', fkey(run_id), RETENTION_MS + GRACE_MS)
  end
  if rec then
    rec[#rec + 1] = '~index'
    rec[#rec + 1] = replaced and '0' or '1'
    table.insert(ENDED, 1, {rec, entries})
  end
  return replaced
end

-- End every run of the conversation whose owner's lease has lapsed.
local function reap(now)
  local cur = redis.call('HMGET', RUN_KEY, 'status', 'lease_until', 'owner', 'run_id')
  if cur[1] and not TERMINAL[cur[1]] and cur[2] and tonumber(cur[2]) < now then
    finish_current(cur[4], 'failed', lapsed(cur[3], ''), now, true)
  end
  for _, id in ipairs(redis.call('LRANGE', QUEUE_KEY, 0, -1)) do
    local q = redis.call('HMGET', qkey(id), 'status', 'lease_until', 'owner')
    if q[1] ~= 'queued' then
      redis.call('LREM', QUEUE_KEY, 0, id)
    elseif tonumber(q[2]) < now then
      finish_queued(id, 'failed', lapsed(q[3], ' while its run was queued'), now, false, true)
    end
  end
end

local function ended()
  if #ENDED == 0 then return '' end
  return cjson.encode(ENDED)
end
"""

START = (
    _PRELUDE
    + r"""
-- ARGV[10] new run id, ARGV[11] owner worker, ARGV[12] policy, ARGV[13] max queued
local now = now_ms()
reap(now)
local id = ARGV[10]
local cur = redis.call('HMGET', RUN_KEY, 'status', 'run_id', 'started_at', 'owner')
if cur[2] == id then
  -- Our own start, run again by a client retry: it already happened.
  return {'started', cur[3], '', '', ended()}
end
local mine = redis.call('HMGET', qkey(id), 'status', 'started_at')
if mine[1] then return {'queued', mine[2], '', '', ended()} end
if (not cur[1] or TERMINAL[cur[1]]) and redis.call('LLEN', QUEUE_KEY) > 0 then
  -- A queue with no active run before it (data lost in part): start its head.
  if promote(now) then
    cur = redis.call('HMGET', RUN_KEY, 'status', 'run_id', 'started_at', 'owner')
  end
end
if cur[1] and not TERMINAL[cur[1]] then
  local policy = ARGV[12]
  if policy == 'reject' then return {'active', '', cur[2], cur[4] or '', ended()} end
  if policy == 'enqueue' and redis.call('LLEN', QUEUE_KEY) >= tonumber(ARGV[13]) then
    return {'full', '', cur[2], cur[4] or '', ended()}
  end
  if policy == 'interrupt' then
    for _, waiting in ipairs(redis.call('LRANGE', QUEUE_KEY, 0, -1)) do
      finish_queued(waiting, 'cancelled', false, now, INTERRUPTED, true)
    end
    redis.call('HSET', RUN_KEY, 'interrupt', '1')
  end
  redis.call('HSET', qkey(id), 'run_id', id, 'status', 'queued', 'started_at', now,
    'updated_at', now, 'latest_seq', 0, 'owner', ARGV[11], 'lease_until', now + LEASE_MS,
    'bytes', 0)
  redis.call('RPUSH', QUEUE_KEY, id)
  return {'queued', tostring(now), cur[2], cur[4] or '', ended()}
end
if cur[2] then
  -- A terminal run is replaced: its keys go now (nobody reads them any more).
  redis.call('DEL', fkey(cur[2]))
  redis.call('DEL', RUN_KEY)
end
redis.call('HSET', RUN_KEY, 'run_id', id, 'status', 'running', 'started_at', now,
  'updated_at', now, 'latest_seq', 0, 'owner', ARGV[11],
  'lease_until', now + LEASE_MS, 'bytes', 0)
return {'started', tostring(now), cur[2] or '', '', ended()}
"""
)
"""Start a run now, queue it, or refuse, by the policy: ``{outcome,
started_at_ms, other_run_id, other_owner, ended}``; outcome ``started``
(``other_run_id``: the replaced run or ''), ``queued`` (``other_*``: the
active run, which the ``interrupt`` policy flagged), ``active`` (``reject``)
or ``full`` (``enqueue`` past the limit). O(1 + queued runs) plus what it
ends."""

WRITE = (
    _PRELUDE
    + r"""
-- ARGV[10] run id, ARGV[11] status, ARGV[12] current_tool ('' with ARGV[13]=0:
-- none), ARGV[14] last_error ('' with ARGV[15]=0: none), ARGV[16] frame count
-- n, ARGV[17] seq of the first frame (the batch's seqs are contiguous),
-- ARGV[18] the n timestamps joined by ' ', ARGV[19] the n JSON frames joined
-- by newlines (JSON escapes every newline inside a value, so none is
-- ambiguous), ARGV[20] the n sizes joined by ' ' ('' when not measured),
-- ARGV[21] '1': answer an end with the run's end number and frames (for
-- the run-end hook).
local now = now_ms()
local id = ARGV[10]
local key = RUN_KEY
local cur = redis.call('HMGET', key, 'run_id', 'status', 'latest_seq', 'bytes', 'ended_by')
if cur[1] ~= id then
  key = qkey(id)
  cur = redis.call('HMGET', key, 'run_id', 'status', 'latest_seq', 'bytes', 'ended_by')
end
local current = key == RUN_KEY
if cur[1] == id and cur[2] == ARGV[11] and TERMINAL[cur[2]] and cur[5] == 'owner' then
  -- This end, run again by a client retry: it was written (and, if the run
  -- is no longer current, it was replaced or was a queued run: not retained).
  local end_no, entries = '0', ''
  if ARGV[21] == '1' then
    end_no = redis.call('HGET', key, 'end_no') or '0'
    entries = cjson.encode(redis.call('XRANGE', fkey(id), '-', '+'))
  end
  return {'ok', tostring(now), current and '0' or '1', cur[4] or '0', ended(), end_no, entries}
end
if cur[1] ~= id or not cur[2] or TERMINAL[cur[2]] then
  return {'lost', cur[2] or ''}
end
local n = tonumber(ARGV[16])
local first = tonumber(ARGV[17])
local have = tonumber(cur[3] or '0')
local bytes = tonumber(cur[4] or '0')
local next_time = string.gmatch(ARGV[18], '[^ ]+')
local next_frame = string.gmatch(ARGV[19], '[^\n]+')
local measured = ARGV[20] ~= ''
local next_size = string.gmatch(ARGV[20], '[^ ]+')
local last = false
for k = 0, n - 1 do
  local t, f = next_time(), next_frame()
  local size = measured and tonumber(next_size())
  -- Frames a retried call already wrote are skipped: writing is idempotent.
  if first + k > have then
    last = string.format('%d', first + k)
    bytes = append(fkey(id), last, t, f, size, bytes)
  end
end
if last then
  if not measured then
    -- One exact trim per batch: the same stream as trimming on every XADD
    -- (nobody sees between the commands of a script), at a third of the cost.
    redis.call('XTRIM', fkey(id), 'MAXLEN', MAXLEN)
  end
  redis.call('HSET', key, 'latest_seq', last)
end
redis.call('HSET', key, 'updated_at', now, 'lease_until', now + LEASE_MS, 'bytes', bytes)
if ARGV[13] == '1' then
  redis.call('HSET', key, 'current_tool', ARGV[12])
else
  redis.call('HDEL', key, 'current_tool')
end
local err = false
if ARGV[15] == '1' then
  redis.call('HSET', key, 'last_error', ARGV[14])
  err = ARGV[14]
else
  redis.call('HDEL', key, 'last_error')
end
local replaced = false
local status = ARGV[11]
local end_no, entries = '0', ''
if TERMINAL[status] then
  if ARGV[21] == '1' then entries = cjson.encode(redis.call('XRANGE', fkey(id), '-', '+')) end
  if current then
    replaced = finish_current(id, status, err, now, false)
  else
    finish_queued(id, status, err, now, false, false)
    replaced = true  -- a queued run that ended is never retained
  end
  end_no = FIRST_END_NO and tostring(FIRST_END_NO) or '0'
elseif current then
  if status == 'queued' then status = 'running' end  -- started meanwhile
  redis.call('HSET', key, 'status', status)
end
return {'ok', tostring(now), replaced and '1' or '0', tostring(bytes), ended(), end_no, entries}
"""
)
"""Append a batch of frames and the run's fields (current or queued run),
ending it if the status is terminal: ``{'ok', now_ms, replaced, bytes,
ended, end number, frames}`` (``replaced`` = ``1`` when the end started a
queued run, which replaced this one, or the run was a queued one: either way
it is not retained; the end number and the frames (JSON) when asked, for the
run-end hook), or ``{'lost', status}`` when the run is no longer this
one or no longer active. O(n) for n frames (``XADD`` each, then one exact
``XTRIM`` of the batch's overflow; with a byte budget, O(1) per frame
trimmed instead). Idempotent: coredis may retry a call whose reply was
lost, so frames at or below ``latest_seq`` are skipped and an end this
owner already wrote answers ``ok``."""

RENEW = (
    _PRELUDE
    + r"""
-- ARGV[10] run id
local now = now_ms()
local id = ARGV[10]
local cur = redis.call('HMGET', RUN_KEY, 'run_id', 'status', 'interrupt')
if cur[1] == id then
  if not cur[2] or TERMINAL[cur[2]] then return {'lost', cur[2] or ''} end
  redis.call('HSET', RUN_KEY, 'lease_until', now + LEASE_MS)
  return {'ok', cur[3] or '', 'current'}
end
local q = redis.call('HGET', qkey(id), 'status')
if q == 'queued' then
  redis.call('HSET', qkey(id), 'lease_until', now + LEASE_MS)
  return {'ok', '', 'queued'}
end
return {'lost', q or ''}
"""
)
"""Extend the owner's lease of a current or queued run: ``{'ok', interrupt
flag, 'current' | 'queued'}`` or ``{'lost', status}`` (the status of the run
as it ended elsewhere, ``''`` when Redis no longer holds it). O(1)."""

READ = (
    _PRELUDE
    + r"""
-- ARGV[10] a run id, or '' for the current run; ARGV[11] '1': also a run
-- that ended while not current (kept for the grace time). Returns {ended,
-- first stream entry id or '', field, value, ...}: no fields when there is
-- no such run (the current one, or the current or a queued one with that id).
local now = now_ms()
reap(now)
local id = ARGV[10]
local key = RUN_KEY
if id ~= '' and redis.call('HGET', RUN_KEY, 'run_id') ~= id then
  key = qkey(id)
  local status = redis.call('HGET', key, 'status')
  if status ~= 'queued' and not (ARGV[11] == '1' and TERMINAL[status]) then
    return {ended(), ''}
  end
end
local fields = redis.call('HGETALL', key)
if #fields == 0 then return {ended(), ''} end
local first = redis.call('XRANGE', fkey(redis.call('HGET', key, 'run_id')), '-', '+', 'COUNT', 1)
local out = {ended(), first[1] and first[1][1] or ''}
for _, v in ipairs(fields) do out[#out + 1] = v end
return out
"""
)
"""The conversation's current run, or the current or queued run ``run_id``,
after reaping, and the id of the oldest entry of its stream. O(1 + queued
runs) plus what it ends."""

QUEUED = (
    _PRELUDE
    + r"""
-- Returns {ended, current run's fields (flat, maybe empty), queued run's fields...}
local now = now_ms()
reap(now)
local out = {ended(), redis.call('HGETALL', RUN_KEY)}
for _, id in ipairs(redis.call('LRANGE', QUEUE_KEY, 0, -1)) do
  out[#out + 1] = redis.call('HGETALL', qkey(id))
end
return out
"""
)
"""The current run and the queued runs in start order, after reaping.
O(1 + queued runs) plus what it ends."""

INTERRUPT = (
    _PRELUDE
    + r"""
-- ARGV[10] run id or '' for the current run
local cur = redis.call('HMGET', RUN_KEY, 'run_id', 'status', 'owner')
if not cur[2] or TERMINAL[cur[2]] or (ARGV[10] ~= '' and ARGV[10] ~= cur[1]) then
  return {}
end
redis.call('HSET', RUN_KEY, 'interrupt', '1')
return {cur[1], cur[3] or ''}
"""
)
"""Flag the active run as interrupted: ``{run_id, owner}``, or ``{}`` when
there is no active run. The caller then tells the owner over pub/sub. O(1)."""

EVICT = r"""
-- KEYS[1] run hash, KEYS[2] the conversation's hooks hash; ARGV[1]
-- stream-key prefix, ARGV[2] run id
local cur = redis.call('HMGET', KEYS[1], 'run_id', 'terminated_at')
redis.call('DEL', ARGV[1] .. ARGV[2])
if cur[1] == ARGV[2] and cur[2] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""
"""Evict one ended run (if it is still the conversation's current one and
terminal, with the conversation's hook counter: nothing of it is left):
``1`` when its record was deleted. O(its stream entries)."""

INDEX = r"""
-- KEYS[1] the retention index (sorted set), KEYS[2] the bytes of its members
-- (hash, field '#total': their sum; same slot through the hash tag).
-- ARGV[1] member to add ('' for none), ARGV[2] retention ms (-1: forever),
-- ARGV[3] cap of retained runs, ARGV[4] bytes of the added member,
-- ARGV[5] max retained bytes (-1: none), ARGV[6] member to drop ('' for none),
-- ARGV[7] '1' when bytes are measured (either budget set).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local measured = ARGV[7] == '1'
local function forget(member)
  if measured then
    local b = tonumber(redis.call('HGET', KEYS[2], member) or '0')
    redis.call('HDEL', KEYS[2], member)
    redis.call('HINCRBY', KEYS[2], '#total', -b)
  end
end
if ARGV[6] ~= '' and redis.call('ZREM', KEYS[1], ARGV[6]) == 1 then forget(ARGV[6]) end
if ARGV[1] ~= '' then
  if redis.call('ZADD', KEYS[1], now, ARGV[1]) == 1 and measured then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
    redis.call('HINCRBY', KEYS[2], '#total', tonumber(ARGV[4]))
  end
end
local expired = 0
local retention = tonumber(ARGV[2])
if retention >= 0 then
  local bound = '(' .. (now - retention + 1)
  if measured then
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound)) do
      forget(member)
    end
  end
  expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', bound)
end
local out = {expired, 0}
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do
    forget(popped[i])
    out[#out + 1] = popped[i]
  end
end
out[2] = #out - 2
local budget = tonumber(ARGV[5])
if measured and budget >= 0 then
  while tonumber(redis.call('HGET', KEYS[2], '#total') or '0') > budget do
    local popped = redis.call('ZPOPMIN', KEYS[1], 1)
    if #popped == 0 then break end
    forget(popped[1])
    out[#out + 1] = popped[1]
  end
end
return out
"""
"""Index an ended run (and drop a replaced one), drop the expired entries,
pop those over the cap, then (with ``max_retained_bytes``) the oldest-ended
while the retained bytes exceed it: ``{expired count, cap count, popped
over the cap..., popped over the bytes...}``. O(log N + M) for M removed."""

HOOKED = r"""
-- KEYS[1] the conversation's hooks hash; ARGV[1] an end number whose hook
-- call is over, or '' to only read. Returns how far the calls are done.
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) > done and redis.call('EXISTS', KEYS[1]) == 1 then
  done = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'done', done)
end
return done
"""
"""Record that the hook call of end number n is over (the highest wins) and
answer the highest end number whose call is over: the turn of end n + 1.
O(1)."""
