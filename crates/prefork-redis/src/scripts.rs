//! The Lua scripts that make each multi-step operation atomic on the server.
//!
//! Every script runs with `EVALSHA` (loaded with `SCRIPT LOAD` on each
//! connect, and again after a `NOSCRIPT` reply). They take the time from the
//! server (`TIME`), so clocks of the machines running workers never matter.
//!
//! Delayed entries are members of a sorted set scored by their due time in
//! microseconds since the epoch (server clock). A member is
//! `nonce:attempt:job-id:payload`; the nonce (unique per handle and call)
//! keeps two identical payloads apart, the job id may be empty (a fresh
//! publish: the stream entry id becomes the job id) and the payload is the
//! rest, bytes as they are.

/// Every script, in the order of [`Script`]'s variants.
pub(crate) const ALL: [&str; 11] = [
    PROMOTE,
    DELAY,
    ACK,
    REQUEUE,
    DEAD,
    REDRIVE,
    TOUCH,
    RECLAIM,
    TAKE_OVER,
    DELETE_DEAD,
    STATS,
];

/// Indexes into [`ALL`] (and into the loaded hashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    Promote = 0,
    Delay = 1,
    Ack = 2,
    Requeue = 3,
    Dead = 4,
    Redrive = 5,
    Touch = 6,
    Reclaim = 7,
    TakeOver = 8,
    DeleteDead = 9,
    Stats = 10,
}

/// Moves due delayed entries into the stream.
///
/// KEYS: stream, delayed, dead, dead index. ARGV: the most to move.
/// Returns 0 when more may be due at once, -1 when nothing is delayed, else
/// the milliseconds until the next entry is due.
const PROMOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now), 'LIMIT', 0, limit)
for _, m in ipairs(due) do
  local i1 = string.find(m, ':', 1, true)
  local i2 = i1 and string.find(m, ':', i1 + 1, true)
  local i3 = i2 and string.find(m, ':', i2 + 1, true)
  if i3 then
    local a = string.sub(m, i1 + 1, i2 - 1)
    local j = string.sub(m, i2 + 1, i3 - 1)
    local f = {'p', string.sub(m, i3 + 1)}
    if a ~= '1' then f[#f + 1] = 'a'; f[#f + 1] = a end
    if j ~= '' then f[#f + 1] = 'j'; f[#f + 1] = j end
    redis.call('XADD', KEYS[1], '*', unpack(f))
  else
    local id = redis.call('XADD', KEYS[3], '*', 'p', m, 'r', 'malformed delayed entry', 'a', '1', 't', t[1])
    redis.call('HSET', KEYS[4], id, id)
  end
  redis.call('ZREM', KEYS[2], m)
end
if #due == limit then return 0 end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #nxt == 0 then return -1 end
return math.ceil((tonumber(nxt[2]) - now) / 1000)
";

/// Adds a delayed entry due `delay` microseconds from now (server clock).
///
/// KEYS: delayed. ARGV: delay in microseconds, member.
const DELAY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[1])), ARGV[2])
return 1
";

/// Acks entries this consumer still holds: XACK and XDEL each.
///
/// KEYS: stream. ARGV: group, consumer, entry ids... Returns one 1 (acked)
/// or 0 (not held by this consumer) per id.
const ACK: &str = r"
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
";

/// Gives a held entry back, as a new entry now or a delayed one later, with
/// the attempt number given (retry: one more; release: the same).
///
/// KEYS: stream, delayed. ARGV: group, consumer, entry id, delay in
/// microseconds, nonce, payload, attempt, job id. Returns 1, or 0 when not
/// held by this consumer.
const REQUEUE: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p ~= 1 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
local delay = tonumber(ARGV[4])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local m = ARGV[5] .. ':' .. ARGV[7] .. ':' .. ARGV[8] .. ':' .. ARGV[6]
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + delay), m)
else
  redis.call('XADD', KEYS[1], '*', 'p', ARGV[6], 'a', ARGV[7], 'j', ARGV[8])
end
return 1
";

/// Moves a held entry to the dead letters (a stream, indexed by job id in
/// a hash; a job dead-lettered again replaces its older dead letter).
///
/// KEYS: stream, dead, dead index. ARGV: group, consumer, entry id, job id,
/// payload, reason, attempt. Returns 1, or 0 when not held by this consumer.
const DEAD: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p ~= 1 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
local old = redis.call('HGET', KEYS[3], ARGV[4])
if old then redis.call('XDEL', KEYS[2], old) end
local t = redis.call('TIME')
local id = redis.call('XADD', KEYS[2], '*', 'j', ARGV[4], 'p', ARGV[5], 'r', ARGV[6], 'a', ARGV[7], 't', t[1])
redis.call('HSET', KEYS[3], ARGV[4], id)
return 1
";

/// Puts a dead letter back in the stream, attempt 1, same job id.
///
/// KEYS: stream, dead, dead index. ARGV: job id. Returns 1, or 0 when there
/// is no such dead letter.
const REDRIVE: &str = r"
local id = redis.call('HGET', KEYS[3], ARGV[1])
if not id then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
local e = redis.call('XRANGE', KEYS[2], id, id)
if #e == 0 then return 0 end
local f = e[1][2]
local payload = ''
for i = 1, #f, 2 do
  if f[i] == 'p' then payload = f[i + 1] end
end
redis.call('XDEL', KEYS[2], id)
redis.call('XADD', KEYS[1], '*', 'p', payload, 'j', ARGV[1])
return 1
";

/// Deletes a dead letter for good.
///
/// KEYS: dead, dead index. ARGV: job id. Returns 1, or 0 when there is no
/// such dead letter.
const DELETE_DEAD: &str = r"
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('XDEL', KEYS[1], id)
";

/// The queue's counts in one atomic snapshot: the stream's length, the
/// group's pending count (claimed: delivered, not acked), the delayed set's
/// size and the dead letters' stream length. Acks delete their entry, so
/// the stream holds exactly the ready and the claimed entries.
///
/// KEYS: stream, delayed, dead. ARGV: group. Returns `{stream length,
/// pending, delayed, dead}`.
const STATS: &str = r"
local len = redis.call('XLEN', KEYS[1])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])[1]
return {len, pending, redis.call('ZCARD', KEYS[2]), redis.call('XLEN', KEYS[3])}
";

/// Resets the idle time of an entry this consumer holds (XCLAIM JUSTID to
/// itself), so reclaim by min-idle time leaves it alone.
///
/// KEYS: stream. ARGV: group, consumer, entry id. Returns 1, or 0 when not
/// held by this consumer.
const TOUCH: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p ~= 1 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
";

/// Claims entries other consumers have held idle for at least the lease
/// (`XPENDING IDLE` then `XCLAIM`), with each one's delivery count. A
/// handle does not reclaim its own entries by scanning (it may still hold
/// them and settle them yet); it names the ones it knows it gave up on (a
/// settle that failed: its stale claims), and those are claimed again
/// once idle for the lease.
///
/// KEYS: stream. ARGV: group, consumer, min idle ms, cursor (`-` or
/// `(id`), the most to claim, then the stale entry ids. Returns `{next
/// cursor, {stale ids still pending but not idle long enough}, {id,
/// fields, deliveries}...}`; the cursor is `-` once the pending list was
/// scanned to its end.
const RECLAIM: &str = r"
local count = tonumber(ARGV[5])
local idle = tonumber(ARGV[3])
local scan = count * 10
local waiting = {}
local out = {'-', waiting}
local n = 0
for i = 6, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local c = {}
    if n < count and p[1][3] >= idle then
      c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], idle, ARGV[i])
    end
    if #c == 1 and c[1] and c[1][2] then
      out[#out + 1] = {c[1][1], c[1][2], p[1][4] + 1}
      n = n + 1
    elseif n >= count or p[1][3] < idle then
      waiting[#waiting + 1] = ARGV[i]
    end
  end
end
if n >= count then return out end
local ps = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', idle, ARGV[4], '+', scan)
local last = nil
for _, p in ipairs(ps) do
  last = p[1]
  if p[2] ~= ARGV[2] then
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], idle, p[1])
    if #c == 1 and c[1] and c[1][2] then
      out[#out + 1] = {c[1][1], c[1][2], p[4] + 1}
      n = n + 1
      if n >= count then break end
    end
  end
end
if last and (n >= count or #ps == scan) then out[1] = '(' .. last end
return out
";

/// Claims at once every entry held by the consumers of a dead process
/// (names `host:pid:random` starting with the given `host:pid:`, so a
/// process of the same pid on another host is never touched), and the
/// given entry ids when such a consumer holds them; deletes those
/// consumers once they hold nothing. `XCLAIM` counts a delivery.
///
/// KEYS: stream. ARGV: group, consumer, the dead process's name prefix,
/// the most to claim, entry ids... Returns `{id, fields, deliveries}...`.
const TAKE_OVER: &str = r"
local g, me, pre, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local function dead(name)
  return name ~= me and string.sub(name, 1, #pre) == pre
    and not string.find(name, ':', #pre + 1, true)
end
local out = {}
local function take(id, count)
  local c = redis.call('XCLAIM', KEYS[1], g, me, 0, id)
  if #c == 1 and c[1] and c[1][2] then
    out[#out + 1] = {c[1][1], c[1][2], count + 1}
  end
end
for i = 5, #ARGV do
  if #out >= max then break end
  local p = redis.call('XPENDING', KEYS[1], g, ARGV[i], ARGV[i], 1)
  if #p == 1 and dead(p[1][2]) then take(p[1][1], p[1][4]) end
end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], g)) do
  local name
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] end
  end
  if name and dead(name) then
    local from = '-'
    while #out < max do
      local ps = redis.call('XPENDING', KEYS[1], g, from, '+', 100, name)
      if #ps == 0 then break end
      for _, p in ipairs(ps) do take(p[1], p[4]) end
      from = '(' .. ps[#ps][1]
    end
    if #redis.call('XPENDING', KEYS[1], g, '-', '+', 1, name) == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], g, name)
    end
  end
end
return out
";

/// Deletes consumers of the group that hold nothing and were idle longer
/// than ARGV[2] ms (atomic, so a consumer cannot take a job in between).
///
/// KEYS: stream. ARGV: group, idle ms, the most to delete. Returns how many
/// were deleted.
pub(crate) const REAP_CONSUMERS: &str = r"
local cs = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local n = 0
for _, c in ipairs(cs) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name and pending == 0 and idle and idle > tonumber(ARGV[2]) and n < tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    n = n + 1
  end
end
return n
";
