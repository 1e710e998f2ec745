#!/usr/bin/env bash
# compare.sh: the chat room's fan-out against the baseline a Go programmer
# would write (gorilla/websocket's examples/chat), on this machine, in one go.
#
#   bench/compare.sh [output-dir]
#
# Builds our Caddy (./cmd/caddy) and the baseline (the examples/chat of the
# gorilla/websocket version in go.mod), then runs each scenario RUNS times
# (default 3), ours and the baseline alternating, each run on a fresh server
# process, and prints a markdown table of medians and ratios:
#
#   S1 fan-out:    1,000 clients, 10 senders at 20 msg/s each, 64-byte text, 20 s
#   S2 saturation: 200 clients, 4 senders, a window of 16 in-flight messages each, 15 s
#   S3 idle:       10,000 connections in ONE room (ours: the lobby), held 20 s
#                  (memory per connection, server CPU to fill the room)
#   S3r idle:      the same in rooms of 100 (ours; gorilla has one hub either way)
#   S4 join storm: 800 clients join at once and leave, in waves for 15 s, while
#                  a reader and a sender chat at 20 msg/s; reports whether the
#                  reader was evicted (ours with the default send_queue 256)
#
# Everything listens on 127.0.0.1 only. Every step is bounded by `timeout`;
# the whole script takes about 8 minutes on 2 cores (13 with RUNS=5).
# Not run in CI. Environment: RUNS, S1_SECONDS, S2_SECONDS, S3_CLIENTS,
# S3_SECONDS, S4_SECONDS, S4_CHURN, SCENARIOS (default "S1 S2 S3 S3r S4"),
# CADDY (a Caddy binary to measure instead of building ./cmd/caddy, e.g. one
# built from an older commit), PORT (three ports from PORT are used), PROFILE=1 to save a CPU
# profile of our server during the first S2 run.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
S1_SECONDS=${S1_SECONDS:-20}
S2_SECONDS=${S2_SECONDS:-15}
S3_CLIENTS=${S3_CLIENTS:-10000}
S3_SECONDS=${S3_SECONDS:-20}
S4_SECONDS=${S4_SECONDS:-15}
S4_CHURN=${S4_CHURN:-800}
SCENARIOS=" ${SCENARIOS:-S1 S2 S3 S3r S4} "
PORT=${PORT:-18480}
OURS_PORT=$PORT
OURS_ADMIN=$((PORT + 1))
BASE_PORT=$((PORT + 2))
OUT=${1:-$(mktemp -d /tmp/chatroom-compare-XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
: >"$OUT/runs.txt"

echo "# output in $OUT"
echo "# machine: $(nproc) cores, $(uname -sr), $(go version | cut -d' ' -f3-)"

# Builds.
if [[ -n ${CADDY:-} ]]; then
	cp "$CADDY" "$OUT/caddy"
else
	timeout 600 go build -o "$OUT/caddy" ./cmd/caddy
fi
timeout 300 go build -o "$OUT/chatbench" ./cmd/chatbench
WS_VERSION=$(go list -m -f '{{.Version}}' github.com/gorilla/websocket)
if ! GOBIN="$OUT" timeout 300 go install "github.com/gorilla/websocket/examples/chat@$WS_VERSION" 2>"$OUT/baseline-install.log"; then
	# Offline: build it from the module cache.
	(cd "$(go env GOMODCACHE)/github.com/gorilla/websocket@$WS_VERSION/examples/chat" &&
		GOFLAGS=-mod=mod timeout 300 go build -o "$OUT/chat" .)
fi
BASE_DIR=$(go env GOMODCACHE)/github.com/gorilla/websocket@$WS_VERSION/examples/chat
echo "# baseline: github.com/gorilla/websocket@$WS_VERSION examples/chat"

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

# start_server ours|baseline: a fresh server; sets SERVER_PID and URL.
start_server() {
	stop_server
	if [[ $1 == ours ]]; then
		CHATBENCH_PORT=$OURS_PORT CHATBENCH_ADMIN_PORT=$OURS_ADMIN CHATBENCH_SEND_QUEUE=${SEND_QUEUE:-1024} \
			"$OUT/caddy" run --config bench/Caddyfile --adapter caddyfile >>"$OUT/caddy.log" 2>&1 &
		SERVER_PID=$!
		URL=ws://127.0.0.1:$OURS_PORT/ws
		wait_port "$OURS_PORT"
	else
		(cd "$BASE_DIR" && exec "$OUT/chat" -addr "127.0.0.1:$BASE_PORT") >>"$OUT/baseline.log" 2>&1 &
		SERVER_PID=$!
		URL=ws://127.0.0.1:$BASE_PORT/ws
		wait_port "$BASE_PORT"
	fi
	sleep 1 # let the server finish starting before its memory is sampled
}

# run scenario label args...: one run of chatbench on a fresh server.
run() {
	local scenario=$1 label=$2
	shift 2
	start_server "$label"
	local before
	before=$(wc -l <"$OUT/runs.txt" 2>/dev/null || echo 0)
	if ! timeout 300 "$OUT/chatbench" "$@" -proto "$label" -label "$label" -scenario "$scenario" \
		-url "$URL" -pid "$SERVER_PID" -json "$RESULTS" >>"$OUT/runs.txt" 2>&1; then
		echo "$scenario $label: run failed (see $OUT/runs.txt)" | tee -a "$OUT/runs.txt"
	fi
	tail -n +"$((before + 1))" "$OUT/runs.txt"
	stop_server
}

want() { [[ $SCENARIOS == *" $1 "* ]]; }

want S1 && for i in $(seq "$RUNS"); do
	for label in ours baseline; do
		run S1 "$label" load -clients 1000 -senders 10 -rate 20 -payload 64 -duration "${S1_SECONDS}s"
	done
done
want S2 && for i in $(seq "$RUNS"); do
	for label in ours baseline; do
		if [[ ${PROFILE:-} == 1 && $i == 1 && $label == ours ]]; then
			(sleep 8 && curl -s -o "$OUT/ours-s2.cpu.pb.gz" \
				"http://127.0.0.1:$OURS_ADMIN/debug/pprof/profile?seconds=5") &
		fi
		run S2 "$label" load -clients 200 -senders 4 -window 16 -payload 64 -duration "${S2_SECONDS}s"
	done
done
# S3: everyone in one room, the lobby, as a site's users would be.
want S3 && for i in $(seq "$RUNS"); do
	for label in ours baseline; do
		run S3 "$label" idle -clients "$S3_CLIENTS" -hold "${S3_SECONDS}s" -dial-parallel 64
	done
done
want S3r && for i in $(seq "$RUNS"); do
	for label in ours baseline; do
		run S3r "$label" idle -clients "$S3_CLIENTS" -room-size 100 -hold "${S3_SECONDS}s" -dial-parallel 64
	done
done
# S4 with the default send_queue (256): what a reader meets on a real site.
want S4 && for i in $(seq "$RUNS"); do
	for label in ours baseline; do
		SEND_QUEUE=256 run S4 "$label" storm -churn "$S4_CHURN" -duration "${S4_SECONDS}s" -rate 20
	done
done

echo
"$OUT/chatbench" table "$RESULTS" | tee "$OUT/table.md"
