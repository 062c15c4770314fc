//! The Lua scripts a subscription runs on the server, each a few stream commands that must
//! see one consistent state: claiming entries together with their delivery counts,
//! refreshing what a consumer still owns, and tidying a stream.
//!
//! They are sent with `EVAL` (the server caches them by hash); each takes the stream key
//! as `KEYS[1]`.

use redis::Cmd;

/// Claims the entries `ARGV[3..]` of group `ARGV[1]` for consumer `ARGV[2]` (`XCLAIM`,
/// which counts one more delivery) and returns `{id, fields, delivery count}` for each
/// that is still pending and still in the stream.
const CLAIM: &str = r"
local out = {}
for i = 3, #ARGV do
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i])
  local entry = claimed[1]
  if entry and entry[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
    local count = 1
    if p[1] then count = p[1][4] end
    out[#out + 1] = {entry[1], entry[2], count}
  end
end
return out
";

/// Finds up to `ARGV[5]` entries of group `ARGV[1]` idle for at least `ARGV[3]` ms, from
/// cursor `ARGV[4]` on (an id, with `(` before it for "after"), looking at no more than ten
/// times that many pending entries (as `XAUTOCLAIM` does, so that one call never walks a
/// long pending list), and claims for consumer `ARGV[2]` those another consumer holds
/// (`XCLAIM`, which counts one more delivery). Entries the consumer holds itself are not
/// claimed (that would count a delivery of an entry it may still be handling, or waiting
/// out a delay): their ids are returned for the caller to judge. Returns `{next cursor,
/// {{id, fields, delivery count}...}, {ids deleted from the stream while pending}, {ids
/// of the consumer's own idle entries}}`.
const RECLAIM: &str = r"
local wanted, idle = math.max(tonumber(ARGV[5]), 1), tonumber(ARGV[3])
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], '+', wanted * 10)
local out, deleted, own = {}, {}, {}
local found, cursor = 0, '0-0'
if #rows >= wanted * 10 then cursor = '(' .. rows[#rows][1] end
for i, p in ipairs(rows) do
  if found >= wanted then
    cursor = '(' .. rows[i - 1][1]
    break
  end
  if p[3] >= idle then
    found = found + 1
    if p[2] == ARGV[2] then
      own[#own + 1] = p[1]
    else
      local entry = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])[1]
      if entry and entry[2] then
        out[#out + 1] = {entry[1], entry[2], p[4] + 1}
      elseif not entry then
        deleted[#deleted + 1] = p[1]
      end
    end
  end
end
return {cursor, out, deleted, own}
";

/// Refreshes the idle time of the entries `ARGV[3..]` that consumer `ARGV[2]` of group
/// `ARGV[1]` still owns (`XCLAIM ... JUSTID`, which counts no delivery), and returns the
/// ids it no longer owns.
const TOUCH: &str = r"
local lost = {}
local args = {KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    args[#args + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #args > 4 then
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return lost
";

/// Trims the stream of every entry that every group has acknowledged (below the oldest
/// pending or, with nothing pending, the last delivered entry of each group), and removes
/// consumers with nothing pending that have been idle for more than `ARGV[1]` ms.
/// Returns how many entries were trimmed.
const TIDY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function fields(list)
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = list[i + 1] end
  return t
end
local floor = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = fields(g)
  local keep = group['last-delivered-id']
  if group['pending'] > 0 then
    keep = redis.call('XPENDING', KEYS[1], group['name'])[2]
  end
  if floor == nil or less(keep, floor) then floor = keep end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group['name'])) do
    local consumer = fields(c)
    if consumer['pending'] == 0 and consumer['idle'] > tonumber(ARGV[1]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group['name'], consumer['name'])
    end
  end
end
if floor == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
";

fn eval(script: &str, key: &str) -> Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(script).arg(1).arg(key);
    command
}

/// The `CLAIM` script for `key`, `group` and `consumer`; append the ids.
pub(crate) fn claim(key: &str, group: &str, consumer: &str) -> Cmd {
    let mut command = eval(CLAIM, key);
    command.arg(group).arg(consumer);
    command
}

/// The `RECLAIM` script.
pub(crate) fn reclaim(
    key: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
) -> Cmd {
    let mut command = eval(RECLAIM, key);
    command
        .arg(group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg(count);
    command
}

/// The `TOUCH` script for `key`, `group` and `consumer`; append the ids.
pub(crate) fn touch(key: &str, group: &str, consumer: &str) -> Cmd {
    let mut command = eval(TOUCH, key);
    command.arg(group).arg(consumer);
    command
}

/// The `TIDY` script.
pub(crate) fn tidy(key: &str, consumer_idle_limit_ms: u64) -> Cmd {
    let mut command = eval(TIDY, key);
    command.arg(consumer_idle_limit_ms);
    command
}
