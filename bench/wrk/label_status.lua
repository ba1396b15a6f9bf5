-- One GET /api/action-codes/labels/{label} per request, through the 100
-- mixed labels of batch_status.lua in turn.
package.path = "bench/wrk/?.lua;" .. package.path
local list = require("labels").mixed()
local counter = 0
request = function()
  counter = counter % #list + 1
  return wrk.format("GET", "/api/action-codes/labels/" .. list[counter], {
    ["Authorization"] = "Bearer mpcgw_bench_key",
  })
end
