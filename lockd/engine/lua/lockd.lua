#!lua name=lockd
-- lockd's server-side functions for real Redis 7+ / Valkey (FUNCTION LOAD REPLACE).
-- Identical replies to the native engine (lockd/engine/engine.py); keep them in step.
--   FCALL lockd_acquire       2 <lock key> <fence key> <lease id> <ttl ms> [<owner record>]
--                                                                         -> {acquired, counter}
--   FCALL lockd_release       1 <lock key> <lease id>                     -> 1 | 0
--   FCALL lockd_extend        1 <lock key> <lease id> <ttl ms> [<owner record>]  -> 1 | 0
--   FCALL lockd_fence_advance 1 <fence key> <token>                       -> {accepted, counter}
--   FCALL lockd_describe      2 <lock key> <fence key>                    -> {pttl ms, counter}
--   FCALL lockd_force_release 1 <lock key>                                -> {released, counter}
--   FCALL lockd_peek          N <lock key>...            -> {{pttl ms, counter, record|nil}...}
--   FCALL lockd_list          0 <cursor> <prefix> <count>
--                             -> {next cursor, {{name, pttl ms, counter, record|nil}...}}
-- A lock key `lock:X` has its fencing counter at `fence:X` and its owner record (opaque to
-- the node) at `meta:X`, with the lock's deadline; the functions given only the lock key
-- derive the others (same hash tag, same slot), and delete the record with the lock.
-- Lock events for watchers go to channel `lockd:events` as
--   <kind>:<counter>:<pttl>:<sha1 hex of the holding lease id>:<key length>:<lock key><record>
-- (kind A: a fencing advance accepted, R: released, F: forced, U: the holder replaced its
-- owner record, by lockd_acquire or lockd_extend; lockd/core/messages.py).
-- Errors are returned with redis.error_reply, never raised, so they carry no
-- "script: ..." suffix and read exactly like the native engine's.

local MAX_TOKEN = 9007199254740991

-- The restart guard. A gateway loads this library with its restart delay (max-TTL +
-- drift) written here; until the redis-server process has been up that long,
-- lockd_acquire refuses as the engine does during its delay, whatever any gateway has
-- noticed. The library is part of the dataset (RDB/AOF), so a node restarted empty has
-- none until a gateway loads it again, and then the guard counts from the process's
-- start, not from the load. 0 (a library loaded by hand) means no guard.
local RESTART_DELAY_MS = 0
local up_long_enough = false  -- once true, stays true until the library is loaded again

-- nil when the node may grant; else the RESTARTDELAY error reply.
local function restart_refusal()
  if up_long_enough or RESTART_DELAY_MS == 0 then return nil end
  local info = redis.call('INFO', 'server')
  local up = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  if not up then
    return redis.error_reply('RESTARTDELAY ' .. RESTART_DELAY_MS ..
      ' ms left: cannot read the node\'s uptime')
  end
  -- Whole seconds, rounded down: the process has been up at least this long. So it
  -- grants from `need` whole seconds of uptime, at most `need - up` seconds from now.
  local need = math.ceil(RESTART_DELAY_MS / 1000)
  if up >= need then
    up_long_enough = true
    return nil
  end
  return redis.error_reply(string.format(
    'RESTARTDELAY %d ms left: this node has been up for only %d s (restart delay %d ms)',
    (need - up) * 1000, up, RESTART_DELAY_MS))
end

-- A strictly positive decimal integer without sign, spaces or leading zeros (as a double:
-- exact only up to MAX_TOKEN; pass the validated string on to commands, never the number).
local function positive(s)
  if type(s) ~= 'string' or #s > 18 or not string.match(s, '^[1-9]%d*$') then
    return nil
  end
  return tonumber(s)
end

local function ttl_error(fname)
  return redis.error_reply('ERR ' .. fname .. ': ttl must be a positive integer of milliseconds')
end

-- How an arity error names "least to most" (most = -1: no upper bound).
local function count_text(least, most)
  if most < 0 then return least .. ' or more' end
  if least == most then return tostring(least) end
  return least .. ' or ' .. most
end

local function within(n, least, most)
  return n >= least and (most < 0 or n <= most)
end

local function arity_error(fname, keys, args, kmin, kmax, amin, amax)
  kmax = kmax or kmin
  amin = amin or kmax
  amax = amax or amin
  if not within(#keys, kmin, kmax) or not within(#args, amin, amax) then
    return redis.error_reply(string.format('ERR %s takes %s keys and %s arguments, got %d and %d',
      fname, count_text(kmin, kmax), count_text(amin, amax), #keys, #args))
  end
  return nil
end

-- The owner record key `meta:X` of lock key `lock:X`; nil for other keys.
local function meta_key(lock)
  if string.sub(lock, 1, 5) == 'lock:' then
    return 'meta:' .. string.sub(lock, 6)
  end
  return nil
end

-- The fencing counter key `fence:X` of lock key `lock:X`, or nil and an error reply.
local function fence_key(lock)
  if string.sub(lock, 1, 5) ~= 'lock:' then
    return nil, redis.error_reply("ERR lockd: lock keys must start with 'lock:'")
  end
  return 'fence:' .. string.sub(lock, 6)
end

-- The counter at `key` (0 when absent), or nil and an error reply.
local function counter(key)
  local v = redis.call('GET', key)
  if not v then
    return 0
  end
  local n = positive(v)
  if not n or n > MAX_TOKEN then
    return nil, redis.error_reply('ERR lockd: fencing counter is not an integer in [1, 2^53)')
  end
  return n
end

-- Publish a lock event for watchers (see the header), if anyone listens.
local function publish_event(kind, lock, n, pttl, record)
  local lease = redis.call('GET', lock)
  local digest = ''
  if lease then digest = redis.sha1hex(lease) end
  redis.call('PUBLISH', 'lockd:events',
    string.format('%s:%d:%d:%s:%d:', kind, n, pttl, digest, #lock) .. lock .. (record or ''))
end

-- Extend a held lock to `ttl` ms, with its owner record: replaced by `record` when one is
-- given (an UPDATED event when it changed), else kept and extended.
local function extend_held(lock, meta, n, ttl, record)
  redis.call('PEXPIRE', lock, ttl)
  if record then
    local before = redis.call('GET', meta)
    redis.call('SET', meta, record, 'PX', ttl)
    if before ~= record then
      publish_event('U', lock, n, tonumber(ttl), record)
    end
  elseif meta then
    redis.call('PEXPIRE', meta, ttl)
  end
end

local function acquire(keys, args)
  local bad = arity_error('lockd_acquire', keys, args, 2, 2, 2, 3)
  if bad then return bad end
  if not positive(args[2]) then return ttl_error('lockd_acquire') end
  local meta = meta_key(keys[1])
  if args[3] and not meta then
    return redis.error_reply("ERR lockd_acquire: an owner record needs a lock key 'lock:...'")
  end
  local refused = restart_refusal()
  if refused then return refused end
  local n, err = counter(keys[2])
  if not n then return err end
  local current = redis.call('GET', keys[1])
  local acquired = 0
  if not current then
    redis.call('SET', keys[1], args[1], 'PX', args[2])
    if args[3] then
      redis.call('SET', meta, args[3], 'PX', args[2])
    elseif meta then
      redis.call('DEL', meta)
    end
    acquired = 1
  elseif current == args[1] then
    extend_held(keys[1], meta, n, args[2], args[3])
    acquired = 1
  end
  return {acquired, n}
end

-- Delete a lock key and its owner record, and tell waiting gateways and watchers.
local function remove_lock(lock, kind)
  local fence = fence_key(lock)
  if fence then
    local n = counter(fence)
    if n then publish_event(kind, lock, n, -2, '') end
  end
  redis.call('DEL', lock)
  local meta = meta_key(lock)
  if meta then redis.call('DEL', meta) end
  redis.call('PUBLISH', 'lockd:released', lock)
end

local function release(keys, args)
  local bad = arity_error('lockd_release', keys, args, 1, 1, 1, 1)
  if bad then return bad end
  if redis.call('GET', keys[1]) ~= args[1] then
    return 0
  end
  remove_lock(keys[1], 'R')
  return 1
end

local function extend(keys, args)
  local bad = arity_error('lockd_extend', keys, args, 1, 1, 2, 3)
  if bad then return bad end
  if not positive(args[2]) then return ttl_error('lockd_extend') end
  local meta = meta_key(keys[1])
  if args[3] and not meta then
    return redis.error_reply("ERR lockd_extend: an owner record needs a lock key 'lock:...'")
  end
  if redis.call('GET', keys[1]) ~= args[1] then
    return 0
  end
  local n = 0
  if args[3] then
    local err
    n, err = counter(fence_key(keys[1]))
    if not n then return err end
  end
  extend_held(keys[1], meta, n, args[2], args[3])
  return 1
end

-- Admin release: delete the lock whatever lease holds it.
local function force_release(keys, args)
  local bad = arity_error('lockd_force_release', keys, args, 1, 1, 0, 0)
  if bad then return bad end
  local fence, ferr = fence_key(keys[1])
  if not fence then return ferr end
  local n, err = counter(fence)
  if not n then return err end
  if redis.call('EXISTS', keys[1]) == 0 then
    return {0, n}
  end
  remove_lock(keys[1], 'F')
  return {1, n}
end

-- {pttl, counter, owner record or nil} of one lock key, or nil and an error reply.
local function peek_one(lock)
  local fence, ferr = fence_key(lock)
  if not fence then return nil, ferr end
  local n, err = counter(fence)
  if not n then return nil, err end
  local pttl = redis.call('PTTL', lock)
  local record = false
  if pttl ~= -2 then
    record = redis.call('GET', meta_key(lock))
  end
  return {pttl, n, record}
end

local function peek(keys, args)
  local bad = arity_error('lockd_peek', keys, args, 1, -1, 0, 0)
  if bad then return bad end
  local refused = restart_refusal()
  if refused then return refused end
  local out = {}
  for i, lock in ipairs(keys) do
    local entry, err = peek_one(lock)
    if not entry then return err end
    out[i] = entry
  end
  return out
end

-- One SCAN step over `lock:{<prefix>*`: the held locks among up to `count` keys.
local function list(keys, args)
  local bad = arity_error('lockd_list', keys, args, 0, 0, 3, 3)
  if bad then return bad end
  if not string.match(args[1], '^%d+$') or #args[1] > 20 then
    return redis.error_reply('ERR lockd_list: invalid cursor')
  end
  if not positive(args[3]) then
    return redis.error_reply('ERR lockd_list: count must be a positive integer')
  end
  local refused = restart_refusal()
  if refused then return refused end
  local pattern = 'lock:{' .. string.gsub(args[2], '[%*%?%[%]\\]', '\\%0') .. '*'
  local step = redis.call('SCAN', args[1], 'MATCH', pattern, 'COUNT', args[3])
  local entries = {}
  for _, key in ipairs(step[2]) do
    if string.sub(key, -1) == '}' and redis.call('EXISTS', key) == 1 then
      local entry, err = peek_one(key)
      if not entry then return err end
      table.insert(entries, {string.sub(key, 7, -2), entry[1], entry[2], entry[3]})
    end
  end
  return {step[1], entries}
end

local function fence_advance(keys, args)
  local bad = arity_error('lockd_fence_advance', keys, args, 1, 1, 1, 1)
  if bad then return bad end
  local target = positive(args[1])
  if not target or target > MAX_TOKEN then
    return redis.error_reply('ERR lockd_fence_advance: token must be an integer in [1, 2^53)')
  end
  local current, err = counter(keys[1])
  if not current then return err end
  if current >= target then
    return {0, current}
  end
  redis.call('SET', keys[1], args[1])
  if string.sub(keys[1], 1, 6) == 'fence:' then
    local lock = 'lock:' .. string.sub(keys[1], 7)
    local record = redis.call('GET', meta_key(lock))
    publish_event('A', lock, target, redis.call('PTTL', lock), record or '')
  end
  return {1, target}
end

-- Read-only: the lock's PTTL (-2 when not held) and the fencing counter. Lock reads are
-- refused in the restart delay, as acquisitions are: what the node reports may be stale.
local function describe(keys, args)
  local bad = arity_error('lockd_describe', keys, args, 2, 2, 0, 0)
  if bad then return bad end
  local refused = restart_refusal()
  if refused then return refused end
  local n, err = counter(keys[2])
  if not n then return err end
  return {redis.call('PTTL', keys[1]), n}
end

redis.register_function('lockd_acquire', acquire)
redis.register_function('lockd_release', release)
redis.register_function('lockd_extend', extend)
redis.register_function('lockd_fence_advance', fence_advance)
redis.register_function{function_name='lockd_describe', callback=describe, flags={'no-writes'}}
redis.register_function('lockd_force_release', force_release)
redis.register_function{function_name='lockd_peek', callback=peek, flags={'no-writes'}}
redis.register_function{function_name='lockd_list', callback=list, flags={'no-writes'}}
