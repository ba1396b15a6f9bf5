-- One retrieve per request, through the 100 remembered labels of
-- batch_retrieve.lua in turn.
package.path = "bench/wrk/?.lua;" .. package.path
local list = require("labels").remembered()
local counter = 0
request = function()
  counter = counter % #list + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer mpcgw_bench_key",
  }, '{"label": "' .. list[counter] .. '"}')
end
