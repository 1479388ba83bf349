-- wrk script used by scripts/bench: rotates over the request paths given
-- after `--` (or read one per line from a file given as @FILE), optionally
-- with extra request headers given as H:Name: value, and prints one
-- machine-readable line at the end:
--   BENCH {"requests":N,"duration_us":N,"rps":X,"p50_us":N,"p90_us":N,
--          "p99_us":N,"max_us":N,"errors":{...}}
-- usage: wrk -t1 -c32 -d10s --latency -s scripts/bench-wrk.lua http://HOST:PORT -- \
--        @/tmp/paths.txt [H:Cache-Control: no-cache]
local paths = {}
local headers = {}
local reqs = {}
local i = 0

function init(args)
  for _, a in ipairs(args) do
    if a:sub(1, 2) == "H:" then
      local name, value = a:sub(3):match("^([^:]+):%s*(.*)$")
      headers[name] = value
    elseif a:sub(1, 1) == "@" then
      for line in io.lines(a:sub(2)) do
        if #line > 0 then paths[#paths + 1] = line end
      end
    else
      paths[#paths + 1] = a
    end
  end
  if #paths == 0 then paths = { "/" } end
  -- Pre-format every request once: the Lua side should cost wrk as little
  -- as possible, whatever the number of paths.
  for k, p in ipairs(paths) do
    reqs[k] = wrk.format("GET", p, headers)
  end
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"mean_us":%.1f,"errors":{"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
