-- One batch/status of the 100 mixed labels per request.
package.path = "bench/wrk/?.lua;" .. package.path
local labels = require("labels")
wrk.method = "POST"
wrk.path = "/api/action-codes/batch/status"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer mpcgw_bench_key"
wrk.body = labels.batch_body(labels.mixed())
