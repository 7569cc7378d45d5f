-- Leases up to ARGV[3] tokens from the bucket at KEYS[1]: GCRA, one key per bucket.
--
-- The key holds the bucket's theoretical arrival time (TAT) in microseconds of the
-- store's own clock, so replicas with skewed clocks still share one budget. A call
-- every ARGV[1] microseconds, ARGV[2] of them at once after a quiet spell. The key
-- expires when the bucket is full again, so idle buckets cost the store nothing.
--
-- Returns { granted, left, refill }: tokens granted (0 to ARGV[3]), tokens left after
-- them, and, with none left, the microseconds until the bucket holds one again.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local room = math.floor((now + burst * interval - tat) / interval)
local granted = math.max(0, math.min(want, room))
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat),
             'PX', math.ceil((tat - now) / 1000) + 1)
end
local left = math.max(0, room - granted)
local refill = 0
if left == 0 then
  refill = math.max(0, math.ceil(tat + interval - burst * interval - now))
end
return { granted, left, refill }
