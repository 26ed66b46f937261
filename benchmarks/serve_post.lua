-- wrk script for benchmarks/serve.py: POST one JSON body (read from the file named by RAYML_BENCH_BODY) and
-- print one machine-readable result line. Latencies are in microseconds; "status" counts non-2xx/3xx answers.
local path = assert(os.getenv("RAYML_BENCH_BODY"), "set RAYML_BENCH_BODY to the JSON body file")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %.0f, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, ' ..
      '"mean_us": %.1f, "max_us": %.0f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
