"""The Lua scripts: every change to a run in Redis is one of these, so each is
atomic (Redis runs a script to completion before any other command).

Each script touches the keys of one conversation only (one hash tag, one
Cluster slot), except :data:`INDEX`, which touches only the cluster-wide
retention index. Times come from the Redis server's ``TIME``, so every worker
agrees on them. Complexity is given per script in ``docs/redis.md``.

``START`` and ``READ`` first *reap* the run: an active run whose owner's
lease has lapsed is ended ``failed`` right there, so no caller ever sees a
run kept "running" by a dead worker. Their first four arguments are
what reaping needs: the conversation's stream-key prefix, the retention in
ms (``-1``: keep forever), the extra time the stream outlives its record
(ms), and ``max_events_per_run``.
"""

from __future__ import annotations

__all__ = ["EVICT", "INDEX", "INTERRUPT", "READ", "RENEW", "START", "WRITE"]

_PRELUDE = r"""
local TERMINAL = {completed = true, failed = true, cancelled = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local FRAMES_PREFIX = ARGV[1]
local RETENTION_MS = tonumber(ARGV[2])
local GRACE_MS = tonumber(ARGV[3])
local MAXLEN = tonumber(ARGV[4])

-- End the run held in KEYS[1]: status, times, an end marker after its last
-- frame, and expiry of its keys. The one place a run ends in Redis.
local function finish(run_id, status, err, now)
  local run_key = KEYS[1]
  local frames_key = FRAMES_PREFIX .. run_id
  local latest = redis.call('HGET', run_key, 'latest_seq') or '0'
  redis.call('HSET', run_key, 'status', status, 'terminated_at', now, 'updated_at', now)
  if err then redis.call('HSET', run_key, 'last_error', err) end
  redis.call('HDEL', run_key, 'owner', 'lease_until', 'interrupt')
  redis.call('XADD', frames_key, 'MAXLEN', MAXLEN + 1, latest .. '-1', 'end', status)
  if RETENTION_MS >= 0 then
    if RETENTION_MS == 0 then
      redis.call('DEL', run_key)
    else
      redis.call('PEXPIRE', run_key, RETENTION_MS)
    end
    redis.call('PEXPIRE', frames_key, RETENTION_MS + GRACE_MS)
  end
end

-- End the run failed if its owner's lease has lapsed; returns its run id then.
local function reap(now)
  local cur = redis.call('HMGET', KEYS[1], 'status', 'lease_until', 'owner', 'run_id')
  if cur[1] and not TERMINAL[cur[1]] and cur[2] and tonumber(cur[2]) < now then
    finish(cur[4], 'failed',
      'owner worker ' .. (cur[3] or '?') .. ' stopped renewing its lease ' ..
      '(worker died or lost Redis); the run was ended by another worker', now)
    return cur[4]
  end
  return false
end
"""

START = (
    _PRELUDE
    + r"""
-- KEYS[1] run hash; ARGV[5] new run id, ARGV[6] owner worker, ARGV[7] lease ms
local now = now_ms()
local reaped = reap(now)
if reaped then
  -- Ended here: the caller runs the end's duties (index, hook) and retries.
  return {'reaped', reaped}
end
local cur = redis.call('HMGET', KEYS[1], 'status', 'run_id', 'started_at')
if cur[1] and not TERMINAL[cur[1]] then
  if cur[2] == ARGV[5] then
    -- Our own start, run again by a client retry: it already happened.
    return {'started', cur[3], ''}
  end
  return {'active', cur[2]}
end
if cur[2] then redis.call('DEL', FRAMES_PREFIX .. cur[2]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'run_id', ARGV[5], 'status', 'running', 'started_at', now,
  'updated_at', now, 'latest_seq', 0, 'owner', ARGV[6],
  'lease_until', now + tonumber(ARGV[7]))
return {'started', tostring(now), cur[2] or ''}
"""
)
"""Start a run if the conversation has no active one: ``{'started', now_ms,
replaced_run_id or ''}``, ``{'active', run_id}``, or ``{'reaped', run_id}``
when it just ended a lapsed run (the caller then retries). O(1) plus deleting the
replaced run's stream (O(its entries))."""

WRITE = (
    _PRELUDE
    + r"""
-- KEYS[1] run hash, KEYS[2] the run's stream; ARGV[5] run id, ARGV[6] lease ms,
-- ARGV[7] status, ARGV[8] current_tool ('' with ARGV[9]=0: none),
-- ARGV[10] last_error ('' with ARGV[11]=0: none), ARGV[12] frame count n,
-- ARGV[13] seq of the first frame (the batch's seqs are contiguous),
-- ARGV[14] the n timestamps joined by ' ', ARGV[15] the n JSON frames joined
-- by newlines (JSON escapes every newline inside a value, so none is ambiguous).
local now = now_ms()
local cur = redis.call('HMGET', KEYS[1], 'run_id', 'status', 'latest_seq')
if cur[1] == ARGV[5] and cur[2] == ARGV[7] and TERMINAL[cur[2]] then
  -- This end, run again by a client retry: it was written.
  return {'ok', tostring(now)}
end
if cur[1] ~= ARGV[5] or not cur[2] or TERMINAL[cur[2]] then
  return {'lost', cur[2] or ''}
end
local n = tonumber(ARGV[12])
local first = tonumber(ARGV[13])
local have = tonumber(cur[3] or '0')
local next_time = string.gmatch(ARGV[14], '[^ ]+')
local next_frame = string.gmatch(ARGV[15], '[^\n]+')
local last = false
for k = 0, n - 1 do
  local t, f = next_time(), next_frame()
  -- Frames a retried call already wrote are skipped: writing is idempotent.
  if first + k > have then
    last = string.format('%d', first + k)
    redis.call('XADD', KEYS[2], last .. '-0', 't', t, 'f', f)
  end
end
if last then
  -- One exact trim per batch: the same stream as trimming on every XADD
  -- (nobody sees between the commands of a script), at a third of the cost.
  redis.call('XTRIM', KEYS[2], 'MAXLEN', MAXLEN)
  redis.call('HSET', KEYS[1], 'latest_seq', last)
end
redis.call('HSET', KEYS[1], 'updated_at', now, 'lease_until', now + tonumber(ARGV[6]))
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'current_tool', ARGV[8])
else
  redis.call('HDEL', KEYS[1], 'current_tool')
end
local err = false
if ARGV[11] == '1' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[10])
  err = ARGV[10]
else
  redis.call('HDEL', KEYS[1], 'last_error')
end
if TERMINAL[ARGV[7]] then
  finish(ARGV[5], ARGV[7], err, now)
else
  redis.call('HSET', KEYS[1], 'status', ARGV[7])
end
return {'ok', tostring(now)}
"""
)
"""Append a batch of frames and the run's fields, ending it if the status is
terminal: ``{'ok', now_ms}``, or ``{'lost', status}`` when the run is no
longer this one or no longer active (another worker reaped it). O(n) for n
frames (``XADD`` each, then one exact ``XTRIM`` of the batch's overflow). Idempotent: coredis may
retry a call whose reply was lost, so frames at or below ``latest_seq`` are
skipped and an end already written answers ``ok``."""

RENEW = (
    _PRELUDE
    + r"""
-- KEYS[1] run hash; ARGV[5] run id, ARGV[6] lease ms
local now = now_ms()
local cur = redis.call('HMGET', KEYS[1], 'run_id', 'status', 'interrupt')
if cur[1] ~= ARGV[5] or not cur[2] or TERMINAL[cur[2]] then
  return {'lost', cur[2] or ''}
end
redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(ARGV[6]))
return {'ok', cur[3] or ''}
"""
)
"""Extend the owner's lease: ``{'ok', interrupt flag}`` or ``{'lost',
status}``. O(1)."""

READ = (
    _PRELUDE
    + r"""
-- KEYS[1] run hash. Returns {reaped run id or '', first stream entry id or '',
-- field, value, ...}
local now = now_ms()
local reaped = reap(now) or ''
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {reaped, ''} end
local run_id = redis.call('HGET', KEYS[1], 'run_id')
local first = redis.call('XRANGE', FRAMES_PREFIX .. run_id, '-', '+', 'COUNT', 1)
local out = {reaped, first[1] and first[1][1] or ''}
for _, v in ipairs(fields) do out[#out + 1] = v end
return out
"""
)
"""The conversation's current run (after reaping it: the reaped run id comes
first) and the id of the oldest entry of its stream. O(1)."""

INTERRUPT = (
    _PRELUDE
    + r"""
-- KEYS[1] run hash; ARGV[5] run id or '' for the current run
local cur = redis.call('HMGET', KEYS[1], 'run_id', 'status', 'owner')
if not cur[2] or TERMINAL[cur[2]] or (ARGV[5] ~= '' and ARGV[5] ~= cur[1]) then
  return {}
end
redis.call('HSET', KEYS[1], 'interrupt', '1')
return {cur[1], cur[3] or ''}
"""
)
"""Flag the active run as interrupted: ``{run_id, owner}``, or ``{}`` when
there is no active run. The caller then tells the owner over pub/sub. O(1)."""

EVICT = r"""
-- KEYS[1] run hash; ARGV[1] stream-key prefix, ARGV[2] run id
local cur = redis.call('HMGET', KEYS[1], 'run_id', 'terminated_at')
redis.call('DEL', ARGV[1] .. ARGV[2])
if cur[1] == ARGV[2] and cur[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
"""Evict one ended run (if it is still the conversation's current one and
terminal): ``1`` when its record was deleted. O(its stream entries)."""

INDEX = r"""
-- KEYS[1] the retention index; ARGV[1] member to add ('' for none),
-- ARGV[2] retention ms (-1: forever), ARGV[3] cap of retained runs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], now, ARGV[1]) end
local expired = 0
local retention = tonumber(ARGV[2])
if retention >= 0 then
  expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - retention + 1))
end
local out = {expired}
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do out[#out + 1] = popped[i] end
end
return out
"""
"""Index an ended run, drop the expired entries and pop those over the cap
(oldest-ended first): ``{expired count, popped member...}``. O(log N + M)
for M removed."""
