-- wrk script for the zero-downtime row: checks every response of GET /work.
-- A response is "mixed" when its derived sum is not the one its version implies (a config assembled
-- from two versions), or when a version is seen with two different hashes. Totals are printed by done()
-- as "ZD ..." lines the driver parses; wrk itself counts non-2xx responses and socket errors.

values = tonumber(os.getenv("BENCH_ZD_VALUES"))
checked = 0
mixed = 0
hash_conflicts = 0
hashes = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status ~= 200 then
    return
  end
  checked = checked + 1
  local version = tonumber(string.match(body, '"version":(%d+)'))
  local hash = string.match(body, '"hash":"(%x+)"')
  local derived = tonumber(string.match(body, '"derived":(%d+)'))
  if version == nil or hash == nil or derived == nil
      or derived ~= version * 1000 * values + values * (values - 1) / 2 then
    mixed = mixed + 1
    return
  end
  local seen = hashes[version]
  if seen == nil then
    hashes[version] = hash
  elseif seen ~= hash then
    hash_conflicts = hash_conflicts + 1
  end
end

function done(summary, latency, requests)
  local all_checked, all_mixed, all_conflicts = 0, 0, 0
  local merged = {}
  for _, thread in ipairs(threads) do
    all_checked = all_checked + thread:get("checked")
    all_mixed = all_mixed + thread:get("mixed")
    all_conflicts = all_conflicts + thread:get("hash_conflicts")
    for version, hash in pairs(thread:get("hashes")) do
      if merged[version] ~= nil and merged[version] ~= hash then
        all_conflicts = all_conflicts + 1
      end
      merged[version] = hash
    end
  end
  io.write(string.format("ZD checked %d mixed %d conflicts %d\n", all_checked, all_mixed, all_conflicts))
  for version, hash in pairs(merged) do
    io.write(string.format("ZD version %d %s\n", version, hash))
  end
end
