#!/usr/bin/env bash
# Builds the gateway's release binary at another revision, to measure this
# build against it in one run, and prints the binary's path:
#
#   BASELINE=$(bench/baseline.sh 7a50bbb) bench/run.sh
#
# Usage: bench/baseline.sh GIT_REV [DIR]
#
# The revision is checked out in a git worktree: DIR if given (kept, and
# reused on the next call), else one under a temporary directory (removed).
# It builds in BASELINE_TARGET_DIR (default target/baseline; the first time,
# a copy of this build's target/release), kept between calls so that only
# what changed is compiled again, and copies the binary to
# BASELINE_TARGET_DIR/bin/mpc-action-gateway-<commit>, so that the binaries
# of several revisions can sit side by side.
#
# With CRITERION_BENCHES (e.g. "hot_path gate app"), it also runs those
# criterion benches of the revision and saves their figures as the criterion
# baseline CRITERION_BASELINE (default "before") where this build's benches
# look for it; then compare with, for example,
#   cargo bench --bench hot_path -- --baseline before
# Benches are matched by name (group/function), not by source.
#
# Everything but the binary's path goes to standard error.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bench/baseline.sh GIT_REV [DIR]" >&2
  exit 2
fi
commit=$(git rev-parse --verify --quiet "$1^{commit}") || {
  echo "$1 is not a commit of this repository" >&2
  exit 2
}
short=$(git rev-parse --short "$commit")
target=${BASELINE_TARGET_DIR:-target/baseline}
build_target=${CARGO_TARGET_DIR:-target}
if ! [ -e "$target" ] && [ -d "$build_target/release" ]; then
  # A copy of this build's release directory: the dependencies the two
  # revisions share are then not compiled again.
  echo "seeding $target with a copy of $build_target/release" >&2
  mkdir -p "$target"
  cp -a "$build_target/release" "$target/release"
fi
mkdir -p "$target"
target=$(cd "$target" && pwd)
# Where this build's criterion benches read their baselines (criterion's own
# choice of directory when CRITERION_HOME is unset).
criterion_home=$(mkdir -p "$build_target" && cd "$build_target" && pwd)/criterion

if [ $# -eq 2 ]; then
  source_dir=$2
else
  temp=$(mktemp -d)
  source_dir=$temp/$short
  # The worktree goes with the temporary directory; the binary is copied out.
  trap 'git -C "$root" worktree remove --force "$source_dir" 2>/dev/null || true; rm -rf "$temp"' EXIT
fi
if [ -e "$source_dir/.git" ]; then
  git -C "$source_dir" checkout --quiet --detach "$commit"
else
  git worktree add --quiet --detach "$source_dir" "$commit"
fi

echo "building $short in $source_dir (target dir $target)" >&2
(cd "$source_dir" && CARGO_TARGET_DIR=$target cargo build --release --quiet --bin mpc-action-gateway) >&2
mkdir -p "$target/bin"
binary=$target/bin/mpc-action-gateway-$short
cp "$target/release/mpc-action-gateway" "$binary"

baseline_name=${CRITERION_BASELINE:-before}
for bench in ${CRITERION_BENCHES:-}; do
  echo "criterion: $bench of $short, saved as baseline \"$baseline_name\" in $criterion_home" >&2
  (cd "$source_dir" && CARGO_TARGET_DIR=$target CRITERION_HOME=$criterion_home \
    cargo bench --quiet --bench "$bench" -- --save-baseline "$baseline_name") >&2
done

echo "$binary"
