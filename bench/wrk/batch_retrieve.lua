-- One batch/retrieve of the 100 remembered labels per request: every item
-- answered from memory.
package.path = "bench/wrk/?.lua;" .. package.path
local labels = require("labels")
wrk.method = "POST"
wrk.path = "/api/action-codes/batch/retrieve"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer mpcgw_bench_key"
wrk.body = labels.batch_body(labels.remembered())
