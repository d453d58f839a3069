-- wrk script for the VitaSync benchmarks (run by benchmarks/loadgen.py).
--
-- wrk ... -s fhir.lua URL -- PATHS_FILE METHOD BODY_FILE TOKEN
--   PATHS_FILE  one request path a line (/fhir/Patient/123); each request picks one at random
--   METHOD      GET, POST or PUT
--   BODY_FILE   request body, or "-" for none; __ID__ becomes the last segment of the chosen
--               path and __N__ a number unique to the request, so every update changes content
--   TOKEN       bearer token sent as Authorization, or "-" for none
-- done() prints one line "WRK_JSON {...}" with counts and latency percentiles in microseconds.

local paths = {}
local method = "GET"
local body = nil
local templated = false
local headers = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  method = args[2] or "GET"
  if args[3] and args[3] ~= "-" then
    local file = assert(io.open(args[3], "rb"))
    body = file:read("*a")
    file:close()
    templated = body:find("__ID__", 1, true) ~= nil or body:find("__N__", 1, true) ~= nil
    headers["Content-Type"] = "application/fhir+json"
  end
  if args[4] and args[4] ~= "-" then
    headers["Authorization"] = "Bearer " .. args[4]
  end
  headers["Accept"] = "application/fhir+json"
  -- A seed per thread: each thread has its own Lua state, at its own address.
  math.randomseed(os.time() + tonumber(tostring(paths):match("0x(%x+)") or "0", 16) % 100000)
end

function request()
  local path = paths[math.random(#paths)]
  local payload = body
  if templated then
    counter = counter + 1
    local id = path:match("([^/]+)$")
    payload = body:gsub("__ID__", id):gsub("__N__", tostring(counter))
  end
  return wrk.format(method, path, headers, payload)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeout_errors":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
