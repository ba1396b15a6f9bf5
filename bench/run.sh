#!/usr/bin/env bash
# One reproducible run, on loopback, of the gateway against its floor (a bare
# actix-web handler) and against nginx configured as the realistic
# alternative. Every server gets one worker; every load the same wrk settings.
# Prints a table and the ratios measured in this run.
#
#   bench/run.sh                 # 10 s per measurement
#   DURATION=30s bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
FLOOR=127.0.0.1:18400
GATEWAY=127.0.0.1:18401
GATEWAY_ADMIN=127.0.0.1:18411
NGINX=127.0.0.1:18402
URL_PATH=/api/action-codes/retrieve

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

cargo build --release --quiet --bin mpc-action-gateway --example floor
work=$(mktemp -d)
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
wait_for "$FLOOR"

digest=$(printf '%s' mpcgw_bench_key | target/release/mpc-action-gateway hash-key)
cat >"$work/gateway.toml" <<TOML
[server]
listen = "$GATEWAY"
workers = 1
[admin]
listen = "$GATEWAY_ADMIN"
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
level = "warn"
TOML
target/release/mpc-action-gateway --config "$work/gateway.toml" >/dev/null 2>&1 &
pids+=($!)
wait_for "$GATEWAY"
# Remember the label of the hit path before measuring it.
curl -s -o /dev/null -H 'Content-Type: application/json' -H 'Authorization: Bearer mpcgw_bench_key' \
  -d '{"label": "2024-05-02T21:03:35.001_0000FzZw"}' "http://$GATEWAY$URL_PATH"

if [ "$have_nginx" = yes ]; then
  mkdir -p "$work/nginx"
  sed -e "s#@DIR@#$work/nginx#g" -e "s#@UPSTREAM@#$FLOOR#g" -e "s#@LISTEN@#$NGINX#g" \
    bench/nginx.conf.template >"$work/nginx/nginx.conf"
  "$NGINX_BIN" -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>"$work/nginx/stderr" &
  pids+=($!)
  wait_for "$NGINX"
  curl -s -o /dev/null -H 'Content-Type: application/json' -H 'Authorization: Bearer mpcgw_bench_key' \
    -d '{"label": "2024-05-02T21:03:35.001_0000FzZw"}' "http://$NGINX$URL_PATH"
else
  echo "nginx is not installed and could not be: its rows are skipped" >&2
fi

# wrk's latency figures in milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

declare -A RPS P50 P99
measure() {
  local name=$1 address=$2 script=$3 prefix=${4:-1}
  local out
  out=$(LABEL_PREFIX=$prefix wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "bench/wrk/$script" "http://$address$URL_PATH")
  RPS[$name]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  P50[$name]=$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)
  P99[$name]=$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms)
  local errors
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
  printf '%-26s %12s req/s   p50 %8s ms   p99 %8s ms%s\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" \
    "${errors:+   (non-2xx: $errors)}"
}

echo "machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'); wrk -t1 -c$CONNECTIONS -d$DURATION; one worker each"
measure floor "$FLOOR" same_label.lua
measure gateway_hit "$GATEWAY" same_label.lua
measure gateway_invalid "$GATEWAY" invalid_label.lua
measure gateway_miss "$GATEWAY" new_label.lua 1
if [ "$have_nginx" = yes ]; then
  measure nginx_hit "$NGINX" same_label.lua
  measure nginx_miss "$NGINX" new_label.lua 2
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "ratios (same run):"
echo "  gateway hit / floor throughput:       $(ratio "${RPS[gateway_hit]}" "${RPS[floor]}")   (target >= 0.8)"
echo "  gateway hit p99 / floor p99:          $(ratio "${P99[gateway_hit]}" "${P99[floor]}")   (target <= 2)"
echo "  gateway invalid / floor throughput:   $(ratio "${RPS[gateway_invalid]}" "${RPS[floor]}")   (target >= 0.9)"
if [ "$have_nginx" = yes ]; then
  echo "  gateway miss / nginx miss throughput: $(ratio "${RPS[gateway_miss]}" "${RPS[nginx_miss]}")   (target >= 1.5)"
  echo "  gateway hit / nginx hit throughput:   $(ratio "${RPS[gateway_hit]}" "${RPS[nginx_hit]}")"
fi
