-- wrk script for quotecache: rotates over the paths given after `--`
-- (default: one quote) and prints req/s and latency p50/p95/p99.
-- usage: wrk -t1 -c32 -d5s -s scripts/wrk-quotes.lua http://HOST:PORT -- /quote/1?region=US ...
local paths = { "/quote/1?region=US&tier=standard&currency=USD" }
local i = 0

function init(args)
  if #args > 0 then
    paths = {}
    for _, p in ipairs(args) do paths[#paths + 1] = p end
  end
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("requests: %d in %.1fs = %.0f req/s\n",
                         summary.requests, secs, summary.requests / secs))
  io.write(string.format("latency: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.2f ms\n",
                         latency:percentile(50) / 1000, latency:percentile(95) / 1000,
                         latency:percentile(99) / 1000, latency.max / 1000))
  io.write(string.format("errors: connect %d, read %d, write %d, non-2xx/3xx %d, timeout %d\n",
                         e.connect, e.read, e.write, e.status, e.timeout))
end
