# Shared by the deploy/check-*.sh scripts: start the gateway built at
# target/debug and wait until its admin listener answers.
# Usage: start_gateway ADMIN_ADDRESS [subcommand...], with MPC_GATEWAY__*
# variables in the environment; sets $gateway to its process id.
start_gateway() {
  local admin=$1
  shift
  local binary=target/debug/mpc-action-gateway
  [ -x "$binary" ] || cargo build --quiet
  "$binary" "$@" >/dev/null 2>&1 &
  gateway=$!
  for _ in $(seq 50); do
    "$binary" healthcheck --url "http://$admin/healthz" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the gateway did not come up on $admin" >&2
  return 1
}
