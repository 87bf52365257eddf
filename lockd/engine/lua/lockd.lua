#!lua name=lockd
-- lockd's server-side functions for real Redis 7+ / Valkey (FUNCTION LOAD REPLACE).
-- Identical replies to the native engine (lockd/engine/engine.py); keep them in step.
--   FCALL lockd_acquire       2 <lock key> <fence key> <lease id> <ttl ms> -> {acquired, counter}
--   FCALL lockd_release       1 <lock key> <lease id>                     -> 1 | 0
--   FCALL lockd_extend        1 <lock key> <lease id> <ttl ms>            -> 1 | 0
--   FCALL lockd_fence_advance 1 <fence key> <token>                       -> {accepted, counter}
--   FCALL lockd_describe      2 <lock key> <fence key>                    -> {pttl ms, counter}
-- Errors are returned with redis.error_reply, never raised, so they carry no
-- "script: ..." suffix and read exactly like the native engine's.

local MAX_TOKEN = 9007199254740991

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

local function arity_error(fname, keys, args, nkeys, nargs)
  if #keys ~= nkeys or #args ~= nargs then
    return redis.error_reply(string.format('ERR %s takes %d keys and %d arguments, got %d and %d',
      fname, nkeys, nargs, #keys, #args))
  end
  return nil
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

local function acquire(keys, args)
  local bad = arity_error('lockd_acquire', keys, args, 2, 2)
  if bad then return bad end
  if not positive(args[2]) then return ttl_error('lockd_acquire') end
  local n, err = counter(keys[2])
  if not n then return err end
  local current = redis.call('GET', keys[1])
  local acquired = 0
  if not current then
    redis.call('SET', keys[1], args[1], 'PX', args[2])
    acquired = 1
  elseif current == args[1] then
    redis.call('PEXPIRE', keys[1], args[2])
    acquired = 1
  end
  return {acquired, n}
end

local function release(keys, args)
  local bad = arity_error('lockd_release', keys, args, 1, 1)
  if bad then return bad end
  if redis.call('GET', keys[1]) ~= args[1] then
    return 0
  end
  redis.call('DEL', keys[1])
  redis.call('PUBLISH', 'lockd:released', keys[1])
  return 1
end

local function extend(keys, args)
  local bad = arity_error('lockd_extend', keys, args, 1, 2)
  if bad then return bad end
  if not positive(args[2]) then return ttl_error('lockd_extend') end
  if redis.call('GET', keys[1]) ~= args[1] then
    return 0
  end
  redis.call('PEXPIRE', keys[1], args[2])
  return 1
end

local function fence_advance(keys, args)
  local bad = arity_error('lockd_fence_advance', keys, args, 1, 1)
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
  return {1, target}
end

-- Read-only: the lock's PTTL (-2 when not held) and the fencing counter.
local function describe(keys, args)
  local bad = arity_error('lockd_describe', keys, args, 2, 0)
  if bad then return bad end
  local n, err = counter(keys[2])
  if not n then return err end
  return {redis.call('PTTL', keys[1]), n}
end

redis.register_function('lockd_acquire', acquire)
redis.register_function('lockd_release', release)
redis.register_function('lockd_extend', extend)
redis.register_function('lockd_fence_advance', fence_advance)
redis.register_function{function_name='lockd_describe', callback=describe, flags={'no-writes'}}
