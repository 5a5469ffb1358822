"""The Lua scripts of ``RedisSessionStore``: each one change to a session and its tenant's books.

Every script runs atomically in Redis. Their shared helpers keep two per-tenant structures
(keys in ``gateway.session_redis``): the session index (``index`` sorted by cursor, ``expiry``
scored by expiry time, purged of what Redis already expired) and the usage ledger (``usage``:
a hash of member -> bytes plus a ``total`` field; ``usage_expiry``: the members scored by
expiry time). A member is ``s:<session id>`` or ``i:<image id>``; purging drops expired members
from the total, so the total follows what is still stored, approximately (an image claim counts
until the expiry its bytes had when it was claimed).
"""

from __future__ import annotations

_HELPERS = """
local function purge(index, expiry, now)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    redis.call('ZREM', index, unpack(gone))
    redis.call('ZREM', expiry, unpack(gone))
  end
end
local function add(usage, delta)
  if delta ~= 0 then redis.call('HINCRBY', usage, 'total', delta) end  -- -0 is no integer to Redis
end
local function unaccount(usage, expiry, member)
  add(usage, -tonumber(redis.call('HGET', usage, member) or '0'))
  redis.call('HDEL', usage, member)
  redis.call('ZREM', expiry, member)
end
local function purge_usage(usage, expiry, now)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 1000)
  for _, member in ipairs(gone) do unaccount(usage, expiry, member) end
  return tonumber(redis.call('HGET', usage, 'total') or '0')
end
local function account(usage, expiry, member, size, expires)
  add(usage, size - tonumber(redis.call('HGET', usage, member) or '0'))
  redis.call('HSET', usage, member, size)
  redis.call('ZADD', expiry, expires, member)
end
"""

# KEYS: session, index, expiry, usage, usage_expiry, meta
# ARGV: record, ttl, cursor, expires_ms, now_ms, max_sessions, max_bytes, member, meta record
# -> 1 created, -1 the tenant has max_sessions live sessions, -2 max_bytes would be passed
CREATE = (
    _HELPERS
    + """
purge(KEYS[2], KEYS[3], ARGV[5])
local total = purge_usage(KEYS[4], KEYS[5], ARGV[5])
local max_sessions = tonumber(ARGV[6])
if max_sessions > 0 and redis.call('ZCARD', KEYS[2]) >= max_sessions then return -1 end
local max_bytes = tonumber(ARGV[7])
if max_bytes > 0 and total + string.len(ARGV[1]) > max_bytes then return -2 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX')
redis.call('SET', KEYS[6], ARGV[9], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
account(KEYS[4], KEYS[5], ARGV[8], string.len(ARGV[1]), ARGV[4])
return 1
"""
)

# KEYS: session, index, expiry, usage, usage_expiry, fence, meta, then keys to keep >= the
# session TTL (its images' bytes and claims)
# ARGV: version, record, ttl, expires_ms, cursor, member, meta record
# -> 1 written, 0 the stored version differs, -1 the session is gone, -2 the turn was settled
COMMIT = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[6]) == 1 then return -2 end
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if redis.sha1hex(current) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
redis.call('SET', KEYS[7], ARGV[7], 'EX', ttl)
redis.call('ZADD', KEYS[2], 0, ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
account(KEYS[4], KEYS[5], ARGV[6], string.len(ARGV[2]), ARGV[4])
for i = 8, #KEYS do
  local left = redis.call('TTL', KEYS[i])
  if left >= 0 and left < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""
)

# KEYS: session, fence; ARGV: fence_ms -> the stored record (nil when gone)
SETTLE = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return redis.call('GET', KEYS[1])
"""

# KEYS: session, index, expiry, usage, usage_expiry, then its meta and image claims to drop
# ARGV: cursor, session member, then image members -> 1 deleted, 0 already gone
DELETE = (
    _HELPERS
    + """
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
unaccount(KEYS[4], KEYS[5], ARGV[2])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
for i = 3, #ARGV do unaccount(KEYS[4], KEYS[5], ARGV[i]) end
return deleted
"""
)

# KEYS: index, expiry; ARGV: now_ms -> expired members dropped from the index
PURGE = (
    _HELPERS
    + """
purge(KEYS[1], KEYS[2], ARGV[1])
return 0
"""
)

# KEYS: usage, usage_expiry; ARGV: now_ms -> the tenant's stored bytes
USAGE = (
    _HELPERS
    + """
return purge_usage(KEYS[1], KEYS[2], ARGV[1])
"""
)

# KEYS: usage, usage_expiry, then (claim, image bytes) pairs
# ARGV: default_ttl_ms, now_ms, then (size, member) pairs: each claim lives as long as the bytes
CLAIM = (
    _HELPERS
    + """
for i = 3, #KEYS, 2 do
  local ttl = redis.call('PTTL', KEYS[i + 1])
  if ttl < 0 then ttl = tonumber(ARGV[1]) end
  redis.call('SET', KEYS[i], '1', 'PX', ttl)
  account(KEYS[1], KEYS[2], ARGV[i + 1], tonumber(ARGV[i]), tonumber(ARGV[2]) + ttl)
end
return 0
"""
)

# KEYS: lock; ARGV: owner, ms -> 1 extended, 0 the lock is not the owner's
EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock; ARGV: owner -> 1 released, 0 the lock is not the owner's
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
