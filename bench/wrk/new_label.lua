-- Every request asks for a label never seen before: always forwarded.
local counter = 0
local prefix = os.getenv("LABEL_PREFIX") or "1"
request = function()
  counter = counter + 1
  local body = string.format('{"label": "2024-05-02T21:03:35.001_%s%07d"}', prefix, counter)
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer mpcgw_bench_key",
  }, body)
end
