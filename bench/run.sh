#!/usr/bin/env bash
# One reproducible run, on loopback, of the gateway against its floor (a bare
# actix-web handler) and against nginx configured as the realistic
# alternative. Every server gets one worker; every load the same wrk settings.
# Prints a table and the ratios measured in this run.
#
# The rows are measured in turn, ROUNDS times over, so that every ratio is
# taken between measurements seconds apart; the table shows medians.
#
#   bench/run.sh                         # 5 rounds of 5 s per row
#   ROUNDS=5 DURATION=10s bench/run.sh   # at most 9 rounds
#   BASELINE=$(bench/baseline.sh REV) bench/run.sh
#
# With BASELINE, the path of another build's gateway binary, the gateway's
# hit, invalid and miss rows are also measured against that binary (same
# configuration, its own ports), next to this build's in every round, and the
# script prints this build / baseline for each.
#
# A second gateway with the same configuration keeps its state in a Redis
# server of its own (store.backend = "redis", as several replicas would), and
# its hit and miss rows are measured in the same rounds; the script also
# counts the Redis commands each of its requests costs.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-32}
if ! [[ $ROUNDS =~ ^[1-9]$ ]]; then
  echo "ROUNDS must be 1 to 9 (each round's miss path needs labels of its own)" >&2
  exit 2
fi
FLOOR=127.0.0.1:18400
FLOOR_ANSWER=127.0.0.1:18403
FLOOR_INVALID=127.0.0.1:18404
GATEWAY=127.0.0.1:18401
GATEWAY_ADMIN=127.0.0.1:18411
GATEWAY_LOGGED=127.0.0.1:18405
GATEWAY_LOGGED_ADMIN=127.0.0.1:18415
NGINX=127.0.0.1:18402
GATEWAY_BASELINE=127.0.0.1:18406
GATEWAY_BASELINE_ADMIN=127.0.0.1:18416
GATEWAY_REDIS=127.0.0.1:18407
GATEWAY_REDIS_ADMIN=127.0.0.1:18417
REDIS=127.0.0.1:18409
BASELINE=${BASELINE:-}
if [ -n "$BASELINE" ] && ! [ -x "$BASELINE" ]; then
  echo "BASELINE=$BASELINE is not an executable (a gateway binary, e.g. from bench/baseline.sh)" >&2
  exit 2
fi
URL_PATH=/api/action-codes/retrieve
# The labels of bench/wrk/same_label.lua and invalid_label.lua.
HIT_LABEL=2024-05-02T21:03:35.001_0000FzZw
INVALID_LABEL=2024-02-30T21:03:35.001_0000FzZw

install() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 (Debian package)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null) ||
    return 1
}
install wrk wrk || { echo "wrk is needed and could not be installed" >&2; exit 1; }
have_nginx=yes
if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then
  install nginx nginx-light || have_nginx=no
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
have_redis=yes
install redis-server redis-server || have_redis=no
install redis-cli redis-tools || have_redis=no
[ "$have_redis" = yes ] || echo "redis-server is not installed and could not be: the rows on Redis are skipped" >&2

addresses=("$FLOOR" "$FLOOR_ANSWER" "$FLOOR_INVALID" "$GATEWAY" "$GATEWAY_ADMIN" "$GATEWAY_LOGGED" "$GATEWAY_LOGGED_ADMIN" "$NGINX")
if [ -n "$BASELINE" ]; then
  addresses+=("$GATEWAY_BASELINE" "$GATEWAY_BASELINE_ADMIN")
fi
if [ "$have_redis" = yes ]; then
  addresses+=("$GATEWAY_REDIS" "$GATEWAY_REDIS_ADMIN" "$REDIS")
fi
for address in "${addresses[@]}"; do
  if (exec 3<>"/dev/tcp/${address%:*}/${address#*:}") 2>/dev/null; then
    echo "$address is already taken: stop whatever listens there first" >&2
    exit 1
  fi
done
cargo build --release --quiet --bin mpc-action-gateway --example floor
# In memory where possible: nginx's cache then never waits for the disk,
# its best case (the gateway keeps its outcomes in memory too).
work=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_for() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://$1/" && return 0
    sleep 0.05
  done
  echo "$1 did not come up" >&2
  exit 1
}

target/release/examples/floor "$FLOOR" >/dev/null 2>&1 &
pids+=($!)
floor_pid=$!
wait_for "$FLOOR"

digest=$(printf '%s' mpcgw_bench_key | target/release/mpc-action-gateway hash-key)
# A gateway's configuration: gateway_config LISTEN ADMIN_LISTEN LOG_LEVEL.
gateway_config() {
  cat <<TOML
[server]
listen = "$1"
workers = 1
[admin]
listen = "$2"
[upstream]
base_url = "http://$FLOOR"
max_per_minute = 100000000
max_concurrent = 256
[dedup]
max_entries = 10000000
[auth]
allow_anonymous = false
[[auth.keys]]
user = "bench"
sha256 = "$digest"
[quota.tiers.default]
requests_per_minute = 1000000000
upstream_per_hour = 1000000000
upstream_burst = 1000000000
[log]
level = "$3"
format = "json"
TOML
}
# Starts the gateway binary $1 with the configuration file $2; its pid is
# then ${pids[-1]}.
start_gateway() {
  "$1" --config "$2" >/dev/null 2>&1 &
  pids+=($!)
}
# The gateway measured, and the same logging one JSON line per request (as
# deployed, stdout read by a fast consumer), for the hit path's log cost.
gateway_config "$GATEWAY" "$GATEWAY_ADMIN" warn >"$work/gateway.toml"
gateway_config "$GATEWAY_LOGGED" "$GATEWAY_LOGGED_ADMIN" info >"$work/gateway_logged.toml"
start_gateway target/release/mpc-action-gateway "$work/gateway.toml"
gateway_pid=${pids[-1]}
start_gateway target/release/mpc-action-gateway "$work/gateway_logged.toml"
gateway_logged_pid=${pids[-1]}
wait_for "$GATEWAY"
wait_for "$GATEWAY_LOGGED"
if [ -n "$BASELINE" ]; then
  gateway_config "$GATEWAY_BASELINE" "$GATEWAY_BASELINE_ADMIN" warn >"$work/gateway_baseline.toml"
  start_gateway "$BASELINE" "$work/gateway_baseline.toml"
  gateway_baseline_pid=${pids[-1]}
  wait_for "$GATEWAY_BASELINE"
fi
# Runs redis-cli against the benchmark's Redis server.
redis_cli() { redis-cli -h "${REDIS%:*}" -p "${REDIS#*:}" "$@"; }
if [ "$have_redis" = yes ]; then
  # Without persistence, in the run's directory, like the other servers.
  mkdir -p "$work/redis"
  redis-server --bind "${REDIS%:*}" --port "${REDIS#*:}" --save "" --appendonly no \
    --dir "$work/redis" >"$work/redis/log" 2>&1 &
  pids+=($!)
  redis_pid=$!
  for _ in $(seq 100); do
    [ "$(redis_cli PING 2>/dev/null)" = PONG ] && break
    sleep 0.05
  done
  [ "$(redis_cli PING 2>/dev/null)" = PONG ] || { echo "redis-server did not come up on $REDIS" >&2; exit 1; }
  # The same configuration as the gateway measured, its state in Redis.
  gateway_config "$GATEWAY_REDIS" "$GATEWAY_REDIS_ADMIN" warn >"$work/gateway_redis.toml"
  MPC_GATEWAY__STORE__BACKEND=redis MPC_GATEWAY__STORE__REDIS_URL="redis://$REDIS" \
    target/release/mpc-action-gateway --config "$work/gateway_redis.toml" >/dev/null 2>&1 &
  pids+=($!)
  gateway_redis_pid=$!
  wait_for "$GATEWAY_REDIS"
fi
# Remember the label of the hit path before measuring it; then keep the hit
# and invalid-label answers, which two more floors serve byte for byte: what
# an answer alone (its status, size and headers) costs the framework and the
# kernel. Usage: retrieve ADDRESS LABEL [curl options].
retrieve() {
  curl -s "${@:3}" -H 'Content-Type: application/json' -H 'Authorization: Bearer mpcgw_bench_key' \
    -d "{\"label\": \"$2\"}" "http://$1$URL_PATH"
}
retrieve "$GATEWAY" "$HIT_LABEL" -o /dev/null
retrieve "$GATEWAY_LOGGED" "$HIT_LABEL" -o /dev/null
if [ -n "$BASELINE" ]; then
  retrieve "$GATEWAY_BASELINE" "$HIT_LABEL" -o /dev/null
fi
if [ "$have_redis" = yes ]; then
  retrieve "$GATEWAY_REDIS" "$HIT_LABEL" -o /dev/null
  if [ "$(redis_cli DBSIZE)" = 0 ]; then
    echo "the gateway on $GATEWAY_REDIS wrote nothing to Redis: is store.backend redis?" >&2
    exit 1
  fi
fi
# The 100 labels of the batch rows (bench/wrk/labels.lua), remembered before
# the rounds by one batch/retrieve.
remembered_labels=$(printf '"2024-05-02T21:03:35.001_R%07d",' $(seq 100))
curl -s -o /dev/null -H 'Content-Type: application/json' -H 'Authorization: Bearer mpcgw_bench_key' \
  -d "{\"labels\": [${remembered_labels%,}]}" "http://$GATEWAY/api/action-codes/batch/retrieve"
retrieve "$GATEWAY" "$HIT_LABEL" --include >"$work/hit_answer.http"
retrieve "$GATEWAY" "$INVALID_LABEL" --include >"$work/invalid_answer.http"
target/release/examples/floor "$FLOOR_ANSWER" "$work/hit_answer.http" >/dev/null 2>&1 &
pids+=($!)
floor_answer_pid=$!
target/release/examples/floor "$FLOOR_INVALID" "$work/invalid_answer.http" >/dev/null 2>&1 &
pids+=($!)
floor_invalid_pid=$!
wait_for "$FLOOR_ANSWER"
wait_for "$FLOOR_INVALID"

if [ "$have_nginx" = yes ]; then
  mkdir -p "$work/nginx"
  sed -e "s#@DIR@#$work/nginx#g" -e "s#@UPSTREAM@#$FLOOR#g" -e "s#@LISTEN@#$NGINX#g" \
    bench/nginx.conf.template >"$work/nginx/nginx.conf"
  "$NGINX_BIN" -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>"$work/nginx/stderr" &
  pids+=($!)
  wait_for "$NGINX"
  # The worker serves; the master and the cache processes (one of which exits
  # after its first minute) sit idle.
  nginx_pids=$(pgrep -P $! -f 'worker process' | tr '\n' ' ')
  retrieve "$NGINX" "$HIT_LABEL" -o /dev/null
else
  echo "nginx is not installed and could not be: its rows are skipped" >&2
fi

# wrk's latency figures in milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

# CPU time (user and system, in clock ticks) the processes $@ have used.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    # Fields after the command name, which ends with the last ')'.
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}
TICKS_PER_SECOND=$(getconf CLK_TCK)

# One measurement of the server made of processes $5...; appends
# "name round rps p50 p99 cpu requests" to $work/results, cpu being the
# server's CPU time per request in microseconds.
measure() {
  local name=$1 address=$2 script=$3 round=$4
  shift 4
  local out rps p50 p99 errors requests ticks cpu
  ticks=$(cpu_ticks "$@")
  out=$(LABEL_PREFIX=$round wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "bench/wrk/$script" "http://$address$URL_PATH")
  ticks=$(($(cpu_ticks "$@") - ticks))
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms)
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t="$ticks" -v hz="$TICKS_PER_SECOND" -v n="$requests" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
  echo "$name $round $rps $p50 $p99 $cpu $requests" >>"$work/results"
  printf '  %-28s %12s req/s   p50 %8s ms   p99 %8s ms   CPU %6s us/request%s\n' "$name" "$rps" "$p50" "$p99" \
    "$cpu" "${errors:+   (non-2xx: $errors)}"
}

# Measures this build's gateway as row $1 with wrk script $2 in round $3 and,
# with a BASELINE, the baseline's as row $1_baseline: one right after the
# other, which goes first alternating from round to round.
measure_gateway() {
  local name=$1 script=$2 round=$3
  if [ -z "$BASELINE" ]; then
    measure "$name" "$GATEWAY" "$script" "$round" "$gateway_pid"
  elif ((round % 2)); then
    measure "$name" "$GATEWAY" "$script" "$round" "$gateway_pid"
    measure "${name}_baseline" "$GATEWAY_BASELINE" "$script" "$round" "$gateway_baseline_pid"
  else
    measure "${name}_baseline" "$GATEWAY_BASELINE" "$script" "$round" "$gateway_baseline_pid"
    measure "$name" "$GATEWAY" "$script" "$round" "$gateway_pid"
  fi
}

# The commands the Redis server has run for its clients, one round trip each:
# the gateway sends nothing but scripts (EVALSHA, EVAL after a NOSCRIPT); the
# commands a script runs inside are not counted.
redis_calls() {
  redis_cli INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '$1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" {n += $3} END {print n + 0}'
}
# The MPC calls the gateway on Redis has made, from its /metrics.
redis_gateway_forwarded() {
  curl -s "http://$GATEWAY_REDIS_ADMIN/metrics" |
    awk '$1 ~ /^mpc_gateway_upstream_requests_total[{]/ {n += $2} END {printf "%d\n", n}'
}
# Measures the gateway on Redis as row $1 with wrk script $2 in round $3, its
# server being the gateway and redis-server together; appends "name round
# calls forwarded redis_ticks" to $work/redis_calls: the Redis commands, the
# MPC calls and Redis's own CPU time of the measurement.
measure_redis() {
  local name=$1 script=$2 round=$3 calls forwarded ticks
  calls=$(redis_calls)
  forwarded=$(redis_gateway_forwarded)
  ticks=$(cpu_ticks "$redis_pid")
  measure "$name" "$GATEWAY_REDIS" "$script" "$round" "$gateway_redis_pid" "$redis_pid"
  echo "$name $round $(($(redis_calls) - calls)) $(($(redis_gateway_forwarded) - forwarded))" \
    "$(($(cpu_ticks "$redis_pid") - ticks))" >>"$work/redis_calls"
}

echo "machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'); wrk -t1 -c$CONNECTIONS -d$DURATION; one worker each; $ROUNDS rounds"
: >"$work/results"
: >"$work/redis_calls"
if [ -n "$BASELINE" ]; then
  echo "baseline (rows *_baseline): $BASELINE"
fi
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  measure floor "$FLOOR" same_label.lua "$round" "$floor_pid"
  measure floor_with_gateway_answer "$FLOOR_ANSWER" same_label.lua "$round" "$floor_answer_pid"
  measure floor_with_invalid_answer "$FLOOR_INVALID" invalid_label.lua "$round" "$floor_invalid_pid"
  measure_gateway gateway_hit same_label.lua "$round"
  if [ "$have_redis" = yes ]; then
    measure_redis gateway_redis_hit same_label.lua "$round"
  fi
  measure gateway_hit_logged "$GATEWAY_LOGGED" same_label.lua "$round" "$gateway_logged_pid"
  measure_gateway gateway_invalid invalid_label.lua "$round"
  measure_gateway gateway_label_status label_status.lua "$round"
  measure_gateway gateway_batch_status batch_status.lua "$round"
  measure_gateway gateway_hit_100 remembered_labels.lua "$round"
  measure_gateway gateway_batch_retrieve batch_retrieve.lua "$round"
  measure_gateway gateway_miss new_label.lua "$round"
  if [ "$have_redis" = yes ]; then
    measure_redis gateway_redis_miss new_label.lua "$round"
  fi
  if [ "$have_nginx" = yes ]; then
    # shellcheck disable=SC2086 # one argument per process
    measure nginx_hit "$NGINX" same_label.lua "$round" $nginx_pids
    # shellcheck disable=SC2086
    measure nginx_miss "$NGINX" new_label.lua "$round" $nginx_pids
  fi
done

# The results column of a figure: "rps", "p50", "p99" or "cpu".
column() { case $1 in rps) echo 3 ;; p50) echo 4 ;; p99) echo 5 ;; cpu) echo 6 ;; esac; }
# The median of the numbers on standard input, printed with format $1.
middle() {
  sort -g | awk -v f="$1\n" '{v[NR] = $1}
    END { if (NR == 0) print "n/a"; else printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# The median of figure $2 of row $1 over the rounds.
median() {
  awk -v row="$1" -v c="$(column "$2")" '$1 == row {print $c}' "$work/results" | middle %s
}
# Row $1's figure $3 divided by row $2's in each round, one line a round.
round_ratios() {
  awk -v a="$1" -v b="$2" -v c="$(column "$3")" '
    $1 == a {x[$2] = $c} $1 == b {y[$2] = $c}
    END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "$work/results"
}
# The median over the rounds of row $1's figure $3 divided by row $2's, each
# ratio taken within one round.
ratio() { round_ratios "$@" | middle %.2f; }
# The same median, then the lowest and the highest of the rounds' ratios.
ratio_range() {
  local ratios
  ratios=$(round_ratios "$@" | sort -g)
  [ -n "$ratios" ] || { echo n/a; return; }
  echo "$(middle %.2f <<<"$ratios") ($(head -n1 <<<"$ratios" | middle %.2f) to $(tail -n1 <<<"$ratios" | middle %.2f))"
}

echo
echo "medians over $ROUNDS rounds:"
echo "| path | requests/s | p50 | p99 | server CPU per request |"
echo "|---|---|---|---|---|"
rows="floor floor_with_gateway_answer floor_with_invalid_answer gateway_hit gateway_hit_logged gateway_invalid gateway_miss"
rows="$rows gateway_label_status gateway_batch_status gateway_hit_100 gateway_batch_retrieve"
[ "$have_nginx" = yes ] && rows="$rows nginx_hit nginx_miss"
[ "$have_redis" = yes ] && rows="$rows gateway_redis_hit gateway_redis_miss"
[ -n "$BASELINE" ] && rows="$rows gateway_hit_baseline gateway_invalid_baseline gateway_miss_baseline"
for row in $rows; do
  echo "| $row | $(median "$row" rps) | $(median "$row" p50) ms | $(median "$row" p99) ms | $(median "$row" cpu) us |"
done
echo
echo "ratios (each taken within a round; median over the rounds):"
echo "  gateway hit / floor throughput:       $(ratio gateway_hit floor rps)   (target >= 0.8)"
echo "  gateway hit p99 / floor p99:          $(ratio gateway_hit floor p99)   (target <= 2)"
echo "  gateway invalid / floor throughput:   $(ratio gateway_invalid floor rps)   (target >= 0.9)"
if [ "$have_nginx" = yes ]; then
  echo "  gateway miss / nginx miss throughput: $(ratio gateway_miss nginx_miss rps)   (target >= 1.5)"
  echo "  gateway hit / nginx hit throughput:   $(ratio gateway_hit nginx_hit rps)"
fi
echo "  floor with the gateway's answer / floor throughput:  $(ratio floor_with_gateway_answer floor rps)   (the hit answer's own cost)"
echo "  gateway hit / floor with the gateway's answer:       $(ratio gateway_hit floor_with_gateway_answer rps)   (the gateway's work)"
echo "  gateway hit logging each request / gateway hit:      $(ratio gateway_hit_logged gateway_hit rps)   (log.level = info, JSON lines)"
echo "  floor with the invalid answer / floor throughput:    $(ratio floor_with_invalid_answer floor rps)   (the 422's own cost: the most gateway invalid / floor can be)"
echo "  gateway invalid / floor with the invalid answer:     $(ratio gateway_invalid floor_with_invalid_answer rps)   (the gateway's work)"
# What one label of a 100-label batch costs against one single request:
# from throughput, single / (100 x batch); from CPU, batch / (100 x single).
per_label() {
  echo "$(round_ratios "$2" "$1" rps | awk '{printf "%.3f\n", $1 / 100}' | middle %.3f) from throughput," \
    "$(round_ratios "$1" "$2" cpu | awk '{printf "%.3f\n", $1 / 100}' | middle %.3f) from CPU"
}
echo "  batch/status, per label / one GET labels/{label}:   $(per_label gateway_batch_status gateway_label_status)   (target <= 0.5)"
echo "  batch/retrieve, per label / one remembered retrieve: $(per_label gateway_batch_retrieve gateway_hit_100)   (target <= 0.5)"
if [ "$have_redis" = yes ]; then
  echo "  gateway on Redis, hit / memory hit throughput:       $(ratio gateway_redis_hit gateway_hit rps)   (target >= 0.9)"
  if [ "$have_nginx" = yes ]; then
    echo "  gateway on Redis, miss / nginx miss throughput:      $(ratio gateway_redis_miss nginx_miss rps)   (target >= 1)"
  fi
  echo "  gateway on Redis, miss / memory miss throughput:     $(ratio gateway_redis_miss gateway_miss rps)"
  echo
  echo "Redis per request of the gateway on Redis (all rounds together; the rows' CPU above is the gateway's and redis-server's):"
  for row in gateway_redis_hit gateway_redis_miss; do
    awk -v row="$row" -v hz="$TICKS_PER_SECOND" '
      FNR == NR && $1 == row {requests += $7; next}
      $1 == row {calls += $3; forwarded += $4; ticks += $5}
      END {
        if (requests == 0) {print "  " row ": n/a"; exit}
        printf "  %-19s %.2f round trips per request", row ":", calls / requests
        if (forwarded > 0) printf ", %.2f per MPC call", calls / forwarded
        printf " (%d commands, %d requests, %d forwarded); redis-server CPU %.2f us per request\n",
          calls, requests, forwarded, ticks * 1e6 / hz / requests
      }' "$work/results" "$work/redis_calls"
  done
fi
if [ -n "$BASELINE" ]; then
  echo
  echo "this build / baseline (each ratio taken within a round; median over the rounds, then the lowest and the highest):"
  echo "| path | requests/s | server CPU per request | p99 |"
  echo "|---|---|---|---|"
  for path in hit invalid miss; do
    echo "| $path | $(ratio_range "gateway_$path" "gateway_${path}_baseline" rps) |" \
      "$(ratio_range "gateway_$path" "gateway_${path}_baseline" cpu) |" \
      "$(ratio_range "gateway_$path" "gateway_${path}_baseline" p99) |"
  done
fi
