#!/usr/bin/env bash
# compression.sh: what `compression` (permessage-deflate) costs and saves,
# on this machine, in one go.
#
#   bench/compression.sh [output-dir]
#
# Builds our Caddy (./cmd/caddy) and chatbench, then:
#
#   wire: bytes a client reads for a 50-message history replay, a
#         100-member online list and one chat message, offering
#         permessage-deflate and not (chatbench wire; one server, on)
#   S2:   200 clients, 4 senders, a window of 16, 64-byte text, 15 s:
#         "off" is the server without compression and plain clients,
#         "deflate" the server with it and clients that offer it (and
#         compress what they send, as browsers do)
#   S2r:  the same at a fixed 100 msg/s per sender (80,000 deliveries/s),
#         which both sustain: in S2 the clients' inflating, not the server,
#         sets the pace once they deflate, so this compares the server's
#         CPU per delivery at equal work
#   S3:   10,000 idle connections in one room, held 20 s, off and deflate
#
# RUNS times each (default 3), off and deflate alternating, each run on a
# fresh server, and prints a table of medians. Everything listens on
# 127.0.0.1 only; every step is bounded by `timeout`. About 10 minutes on 2
# cores. Environment: RUNS, S2_SECONDS, S3_CLIENTS, S3_SECONDS, SCENARIOS
# (default "wire S2 S2r S3"), CADDY, PORT (two ports from PORT are used).
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
S2_SECONDS=${S2_SECONDS:-15}
S3_CLIENTS=${S3_CLIENTS:-10000}
S3_SECONDS=${S3_SECONDS:-20}
SCENARIOS=" ${SCENARIOS:-wire S2 S2r S3} "
PORT=${PORT:-18680}
ADMIN=$((PORT + 1))
OUT=${1:-$(mktemp -d /tmp/chatroom-compression-XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
: >"$OUT/runs.txt"

echo "# output in $OUT"
echo "# machine: $(nproc) cores, $(uname -sr), $(go version | cut -d' ' -f3-)"
if [[ -n ${CADDY:-} ]]; then
	cp "$CADDY" "$OUT/caddy"
else
	timeout 600 go build -o "$OUT/caddy" ./cmd/caddy
fi
timeout 300 go build -o "$OUT/chatbench" ./cmd/chatbench

SERVER_PID=
stop_server() {
	if [[ -n $SERVER_PID ]]; then
		kill "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=
	fi
}
trap stop_server EXIT

wait_port() { # port
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "server did not listen on 127.0.0.1:$1" >&2
	return 1
}

# start_server off|deflate [history]: a fresh Caddy; sets SERVER_PID.
start_server() {
	stop_server
	local comp=
	[[ $1 == deflate ]] && comp=compression
	CHATBENCH_PORT=$PORT CHATBENCH_ADMIN_PORT=$ADMIN CHATBENCH_COMPRESSION=$comp CHATBENCH_HISTORY=${2:-0} \
		"$OUT/caddy" run --config bench/Caddyfile --adapter caddyfile >>"$OUT/caddy.log" 2>&1 &
	SERVER_PID=$!
	wait_port "$PORT"
	sleep 1 # let the server finish starting before its memory is sampled
}

# run scenario off|deflate args...: one run of chatbench on a fresh server.
run() {
	local scenario=$1 label=$2
	shift 2
	start_server "$label"
	local flags=()
	[[ $label == deflate ]] && flags=(-deflate)
	local before
	before=$(wc -l <"$OUT/runs.txt")
	if ! timeout 300 "$OUT/chatbench" "$@" "${flags[@]}" -label "$label" -scenario "$scenario" \
		-url "ws://127.0.0.1:$PORT/ws" -pid "$SERVER_PID" -json "$RESULTS" >>"$OUT/runs.txt" 2>&1; then
		echo "$scenario $label: run failed (see $OUT/runs.txt)" | tee -a "$OUT/runs.txt"
	fi
	tail -n +"$((before + 1))" "$OUT/runs.txt"
	stop_server
}

want() { [[ $SCENARIOS == *" $1 "* ]]; }

if want wire; then
	start_server deflate 50
	timeout 120 "$OUT/chatbench" wire -url "ws://127.0.0.1:$PORT/ws" -history 50 -members 100 | tee "$OUT/wire.md"
	stop_server
fi
want S2 && for i in $(seq "$RUNS"); do
	for label in off deflate; do
		run S2 "$label" load -clients 200 -senders 4 -window 16 -payload 64 -duration "${S2_SECONDS}s"
	done
done
want S2r && for i in $(seq "$RUNS"); do
	for label in off deflate; do
		run S2r "$label" load -clients 200 -senders 4 -rate 100 -payload 64 -duration "${S2_SECONDS}s"
	done
done
want S3 && for i in $(seq "$RUNS"); do
	for label in off deflate; do
		run S3 "$label" idle -clients "$S3_CLIENTS" -hold "${S3_SECONDS}s" -dial-parallel 64
	done
done

echo
"$OUT/chatbench" table -a deflate -b off "$RESULTS" | tee "$OUT/table.md"
