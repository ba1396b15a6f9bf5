#!/usr/bin/env bash
# Validates the Prometheus side of the deployment: the alert rules, their unit
# tests, and the metrics exposition of a real gateway (built at target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing Debian's prometheus package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

. deploy/lib.sh
export MPC_GATEWAY__SERVER__LISTEN=127.0.0.1:18180 \
  MPC_GATEWAY__ADMIN__LISTEN=127.0.0.1:18181 \
  MPC_GATEWAY__UPSTREAM__BASE_URL=http://127.0.0.1:9
start_gateway 127.0.0.1:18181
trap 'kill "$gateway" 2>/dev/null || true' EXIT

# Some traffic, so that every kind of family has series: a refused upstream, a bad label.
curl -s -o /dev/null -X POST http://127.0.0.1:18180/api/action-codes/retrieve \
  -H 'Content-Type: application/json' -d '{"label": "A10cnQO"}'
curl -s -o /dev/null -X POST http://127.0.0.1:18180/api/action-codes/retrieve \
  -H 'Content-Type: application/json' -d '{"label": "not a label"}'
exposition=$(curl -sf http://127.0.0.1:18181/metrics)
printf '%s\n' "$exposition" | promtool check metrics
echo "promtool check metrics: $(printf '%s\n' "$exposition" | grep -c '^mpc_gateway_') gateway series, no problems"
