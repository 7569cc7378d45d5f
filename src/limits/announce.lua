-- A replica says it is live: member ARGV[1] of the sorted set at KEYS[1], scored by the
-- store's clock in milliseconds. Members not heard from for ARGV[2] milliseconds are
-- dropped, and the set itself expires when every replica has gone.
--
-- Returns the number of live replicas, this one included.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
