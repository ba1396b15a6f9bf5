-- Every request asks for the same label: after the first, a remembered answer.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer mpcgw_bench_key"
wrk.body = '{"label": "2024-05-02T21:03:35.001_0000FzZw"}'
