"""Lua scripts of the Streams broker. Each touches the keys of one queue only (one hash slot).

Stream entries carry the encoded Dramatiq message in field ``m`` and, once a message has been
handed out again after a crash or a shutdown, the redelivery count in field ``r``.
"""

from __future__ import annotations

#: Move due delayed messages onto the stream.  Safe to run from many processes at once: the
#: move is atomic, so each delayed message is added exactly once.
#: KEYS: delayed, stream.  ARGV: now_ms, limit.  Returns {moved, next_eta_ms or false}.
PROMOTE = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', member)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
"""

#: Return held entries to the stream (shutdown requeue, or recovery from a dead consumer).
#: ``XCLAIM`` with a minimum idle time makes recovery race-free: of two recoverers only one
#: claims an entry, and an entry that was just delivered again is left alone.
#: KEYS: stream.  ARGV: group, claimer, min_idle_ms, id1, id2, ...
#: Returns the number of entries returned to the stream.
RETURN_TO_STREAM = """
local group, claimer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local moved = 0
for i = 4, #ARGV do
  local claimed = redis.call('XCLAIM', KEYS[1], group, claimer, min_idle, ARGV[i])
  local entry = claimed[1]
  if entry and entry[2] then
    local fields = entry[2]
    local payload, redeliveries = nil, 0
    for j = 1, #fields, 2 do
      if fields[j] == 'm' then payload = fields[j + 1] end
      if fields[j] == 'r' then redeliveries = tonumber(fields[j + 1]) end
    end
    if payload then
      redis.call('XADD', KEYS[1], '*', 'm', payload, 'r', redeliveries + 1)
    end
    redis.call('XACK', KEYS[1], group, ARGV[i])
    moved = moved + 1
  elseif entry then
    -- the entry was trimmed or deleted: nothing to return, just clear the pending slot
    redis.call('XACK', KEYS[1], group, ARGV[i])
  end
end
return moved
"""

#: Dead-letter one message: record it with its error, attempts and time, then ack it.
#: KEYS: stream, dead.  ARGV: group, entry_id, payload, error, attempts, failed_at_ms, maxlen.
DEAD_LETTER = """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*',
  'm', ARGV[3], 'error', ARGV[4], 'attempts', ARGV[5], 'failed_at', ARGV[6], 'entry', ARGV[2])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""

#: Trim acked entries: everything older than the oldest un-acked entry and at or before the
#: group's last delivered id.  Undelivered and pending entries are never trimmed.
#: KEYS: stream.  ARGV: group.  Returns the number of entries trimmed.
TRIM = """
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local threshold
if summary[1] > 0 then
  threshold = summary[2]
else
  local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
  local last
  for _, g in ipairs(groups) do
    local name, delivered
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
    end
    if name == ARGV[1] then last = delivered end
  end
  if not last or last == '0-0' then return 0 end
  local ms, seq = string.match(last, '(%d+)-(%d+)')
  threshold = ms .. '-' .. (tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', threshold)
"""

#: Move dead-lettered messages back onto their queue (operator action).
#: KEYS: stream, dead.  ARGV: id1, id2, ...  (no ids: all of them).  Returns the number moved.
REQUEUE_DEAD = """
local entries
if #ARGV == 0 then
  entries = redis.call('XRANGE', KEYS[2], '-', '+')
else
  entries = {}
  for i = 1, #ARGV do
    local found = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
    if found[1] then table.insert(entries, found[1]) end
  end
end
local moved = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'm' then
      redis.call('XADD', KEYS[1], '*', 'm', fields[j + 1])
      moved = moved + 1
    end
  end
  redis.call('XDEL', KEYS[2], entry[1])
end
return moved
"""
