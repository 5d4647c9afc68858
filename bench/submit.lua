-- wrk script for bench/submit.py: POST /api/v1/jobs/ with the NVFlare client parent's payload.
-- Environment: SUBMIT_TOKEN (site token), SUBMIT_PREFIX (job id prefix), SUBMIT_COPIES (how many
-- consecutive requests share one job id: 1 = every job new; 20 = twenty copies sent at once over
-- the thread's connections).
local token = os.getenv("SUBMIT_TOKEN")
local prefix = os.getenv("SUBMIT_PREFIX") or "w"
local copies = tonumber(os.getenv("SUBMIT_COPIES") or "1")
local threads = {}
local counter = 0

function setup(thread)
  thread:set("name", "t" .. #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + #name)
  statuses = {}
end

local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end

local template = [[{"site": "site-1", "job_id": "%s", "role": "client",
 "job_meta": {"job_id": "%s", "name": "hello-pt", "study": "", "resource_spec": {"site-1": {"num_of_gpus": 0}},
              "launcher_spec": {"default": {"process": {}}}},
 "job_args": {"exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
   "workspace": ["-m", "/var/tmp/nvflare/workspace"], "startup_dir": ["-w", "/var/tmp/nvflare/workspace/startup"],
   "job_id": ["-n", "%s"], "client_name": ["-c", "site-1"], "parent_url": ["-p", "tcp://localhost:8004"],
   "parent_conn_sec": ["--parent_conn_sec", "clear"], "scheme": ["-scheme", "tcp"], "target": ["-g", "localhost:8002"],
   "startup_config_file": ["-s", "fed_client.json"], "auth_token": ["-t", "%s"], "auth_signature": ["-ts", "%s"],
   "ssid": ["-d", "%s"]}}]]

function request()
  local id = string.format("%s-%s-%d", prefix, name, math.floor(counter / copies))
  counter = counter + 1
  local body = string.format(template, id, id, id, hex(32), hex(32), hex(32))
  return wrk.format("POST", "/api/v1/jobs/", {["Content-Type"] = "application/json",
                                               ["Authorization"] = "Token " .. token}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for code, n in pairs(s) do total[code] = (total[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(total) do table.insert(parts, string.format("\"%d\": %d", code, n)) end
  io.write(string.format("WRK {\"statuses\": {%s}, \"seconds\": %f, \"p50_ms\": %f, \"p99_ms\": %f, \"errors\": %d}\n",
    table.concat(parts, ", "), summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
