-- Every request carries a label the MPC would refuse (day 30 of February).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer mpcgw_bench_key"
wrk.body = '{"label": "2024-02-30T21:03:35.001_0000FzZw"}'
