-- wrk script for the Drover load benchmark (driven by tests/bench/run.sh).
-- POSTs the request body read from $BENCH_BODY_FILE to $BENCH_PATH (default /v1/chat/completions) with
-- `Content-Type: application/json` plus the headers in $BENCH_HEADERS (one `Name: value` per line; default
-- `Authorization: Bearer bench`) and, when the run ends, prints one machine-readable line that run.sh parses:
--   BENCH requests=N duration_us=N p50_us=N p99_us=N connect=N read=N write=N status=N timeout=N

local body_file = os.getenv("BENCH_BODY_FILE")
local f = assert(io.open(body_file, "rb"), "cannot read BENCH_BODY_FILE")
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local headers = os.getenv("BENCH_HEADERS") or ("Authorization: Bearer " .. (os.getenv("BENCH_API_KEY") or "bench"))
for line in headers:gmatch("[^\r\n]+") do
  local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
  assert(name, "bad line in BENCH_HEADERS: " .. line)
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
