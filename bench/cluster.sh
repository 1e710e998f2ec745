#!/usr/bin/env bash
# cluster.sh: the memcached cluster before and after a change, on this
# machine, in one go.
#
#   bench/cluster.sh [before-commit] [output-dir]
#
# Builds our Caddy (./cmd/caddy) from the work tree ("after") and from
# before-commit ("before", default 4fdac8d, the per-room log design) in a
# temporary git worktree, then runs `chatbench cluster` RUNS times (default
# 3), before and after alternating, each scenario on fresh memcached and
# Caddy processes, and prints a markdown table of medians:
#
#   idle:    1 / 1,000 / 10,000 rooms, one idle member per room on each of
#            2 and 3 instances (BEFORE_IDLE_ROOMS limits the old design,
#            default 1,1000: at 10,000 rooms it floods memcached)
#   fresh:   1,000 new rooms opened within 10 s on 2 instances
#   load:    100 rooms at 200 msg/s in all, senders on one instance,
#            receivers on the other, after a 1 s warm-up
#   bigroom: one room with 2,000 members on each of 2 instances
#
# Figures: memcached gets/s (its cmd_get, which counts every key of a
# multi-get), instance and memcached CPU (percent of one core),
# cross-instance latency. Everything listens on 127.0.0.1 only; every step
# is bounded by `timeout`. About 6 minutes per run of "after". Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:-4fdac8d}
OUT=${2:-$(mktemp -d /tmp/chatroom-cluster-XXXXXX)}
RUNS=${RUNS:-3}
BEFORE_IDLE_ROOMS=${BEFORE_IDLE_ROOMS:-1,1000}
mkdir -p "$OUT"
echo "# output in $OUT"
echo "# machine: $(nproc) cores, $(uname -sr), $(go version | cut -d' ' -f3-)"

go build -o "$OUT/caddy-after" ./cmd/caddy
go build -o "$OUT/chatbench" ./cmd/chatbench
tree=$(mktemp -d /tmp/chatroom-before-XXXXXX)
rmdir "$tree"
git worktree add -q --detach "$tree" "$BEFORE"
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
(cd "$tree" && go build -o "$OUT/caddy-before" ./cmd/caddy)
git worktree remove --force "$tree"

for run in $(seq 1 "$RUNS"); do
	echo "# run $run of $RUNS"
	timeout 1200 "$OUT/chatbench" cluster -caddy "$OUT/caddy-after" -label after -json "$OUT/results.jsonl"
	timeout 1200 "$OUT/chatbench" cluster -caddy "$OUT/caddy-before" -label before \
		-idle-rooms "$BEFORE_IDLE_ROOMS" -port 19400 -json "$OUT/results.jsonl"
done
"$OUT/chatbench" clustertable "$OUT/results.jsonl"
