#!/usr/bin/env bash
# Where Drover's CPU goes per request: runs `drover serve` (release build) in front of drover-mock, drives it with
# wrk, and samples the drover process with `perf record` for the measured run. Prints the share of CPU per
# thread group and the hottest functions, and writes the report to bench-results/profile-<mode>-c<N>.md.
#
#   bash tests/bench/profile.sh                         # non-stream, 64 connections
#   PROFILE_MODE=stream PROFILE_CONCURRENCY=1 bash tests/bench/profile.sh
#   PROFILE_API=responses bash tests/bench/profile.sh    # Responses in, Anthropic Messages out (translated)
#
# Environment (all optional): PROFILE_MODE (non-stream | stream), PROFILE_CONCURRENCY (default 64),
# PROFILE_DURATION (default 10s), PROFILE_USAGE (on | off, default on), PROFILE_TOP (functions listed, 25),
# PROFILE_LIMITS (on: auth, rate_limit and spend_cap on, the request's key and its tenant with rpm, tpm,
# concurrency and a cap too high to refuse; default off).
# Needs perf (apt: linux-perf) and wrk; run as root or with kernel.perf_event_paranoid <= 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MODE=${PROFILE_MODE:-non-stream}
CONNS=${PROFILE_CONCURRENCY:-64}
DURATION=${PROFILE_DURATION:-10s}
USAGE=${PROFILE_USAGE:-on}
LIMITS=${PROFILE_LIMITS:-off}
API=${PROFILE_API:-chat}
TOP=${PROFILE_TOP:-25}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
LOG_TAG=profile
TMP_NAME=drover-profile
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
log "building release"
cargo build --release --bin drover --bin drover-mock >&2

filler=$(printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 19))
stream=false
[[ $MODE == stream ]] && stream=true
path=/v1/chat/completions
case $API in
  chat)
    printf '{"model":"bench-model","max_tokens":64,"stream":%s,"messages":[{"role":"system","content":"You are a helpful assistant. Answer in one short paragraph."},{"role":"user","content":"Summarize this text: %s"}]}' \
      "$stream" "$filler" >"$TMP/body.json"
    ;;
  responses)
    path=/v1/responses
    printf '{"model":"bench-claude","max_output_tokens":64,"stream":%s,"instructions":"You are a helpful assistant. Answer in one short paragraph.","input":"Summarize this text: %s"}' \
      "$stream" "$filler" >"$TMP/body.json"
    ;;
  *) die "PROFILE_API is chat or responses, not '$API'" ;;
esac

"$BIN/drover-mock" --addr 127.0.0.1:0 >"$TMP/mock.addr" 2>"$TMP/mock.log" &
PIDS+=("$!")
for _ in $(seq 100); do [[ -s $TMP/mock.addr ]] && break; sleep 0.1; done
MOCK_ADDR=$(head -n1 "$TMP/mock.addr")
http=$(free_port)
grpc=$(free_port)
DROVER_ADMIN_TOKEN=bench RUST_LOG=warn "$BIN/drover" serve --db "$TMP/drover.db" --http "127.0.0.1:$http" \
  --grpc "127.0.0.1:$grpc" --usage-reporting "$USAGE" >"$TMP/drover.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_200 60 "$pid" "http://127.0.0.1:$http/readyz" || { tail -20 "$TMP/drover.log" >&2; die "drover did not start"; }
cli() { "$BIN/drover" --server "http://127.0.0.1:$grpc" --token bench "$@" >/dev/null; }
cli provider add mock --kind openai-compatible --base-url "http://$MOCK_ADDR/v1"
cli route set bench-model --target mock/bench-model
cli provider add mock-anthropic --kind anthropic --base-url "http://$MOCK_ADDR/v1" --api-key bench
cli route set bench-claude --target mock-anthropic/bench-model
wait_200 30 "$pid" -X POST -H 'content-type: application/json' --data-binary "@$TMP/body.json" \
  "http://127.0.0.1:$http$path" || die "a request through drover does not succeed"

secret=bench
if [[ $LIMITS == on ]]; then
  cli price set bench-model --input 0.15 --output 0.6
  cli tenant create bench
  secret=$("$BIN/drover" --server "http://127.0.0.1:$grpc" --token bench key create --tenant bench --json |
    sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')
  [[ -n $secret ]] || die "no key created"
  key_id=$("$BIN/drover" --server "http://127.0.0.1:$grpc" --token bench key list --json |
    sed -n 's/.*"id": *"\(key_[^"]*\)".*/\1/p' | head -n1)
  for scope in "--tenant bench" "--key $key_id"; do
    # shellcheck disable=SC2086
    cli limit set $scope --rpm 1000000000000 --tpm 1000000000000 --concurrency 100000
    # shellcheck disable=SC2086
    cli cap set $scope --usd 1000000 --period total
  done
  for module in auth rate_limit spend_cap; do cli module enable "$module"; done
  # The policy reaches the data plane within moments; the first lease a moment later.
  for _ in $(seq 50); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
      -H "Authorization: Bearer $secret" --data-binary "@$TMP/body.json" "http://127.0.0.1:$http/v1/chat/completions")
    [[ $code == 200 ]] && break
    sleep 0.2
  done
  [[ $code == 200 ]] || die "a request with the key answered $code"
fi
export BENCH_BODY_FILE=$TMP/body.json BENCH_PATH=$path BENCH_HEADERS="Authorization: Bearer $secret"
threads=$((CONNS < $(nproc) ? CONNS : $(nproc)))
wrk_run() { wrk -t "$threads" -c "$CONNS" --timeout 10s --latency -s "$ROOT/tests/bench/chat.lua" -d "$1" \
  "http://127.0.0.1:$http"; }
log "warm-up"
wrk_run 2s >/dev/null 2>&1 || true
log "$MODE c=$CONNS for $DURATION, usage reporting $USAGE, sampled by perf"
perf record -F 999 -g -p "$pid" -o "$TMP/perf.data" -- sleep "${DURATION%s}" 2>"$TMP/perf.log" &
perf_pid=$!
line=$(wrk_run "$DURATION" 2>&1 | grep '^BENCH ' || true)
wait "$perf_pid" || true
requests=$(awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "requests") print kv[2] } }' <<<"$line")

api_tag="" limits_tag=""
[[ $API == chat ]] || api_tag="$API-"
[[ $LIMITS != on ]] || limits_tag=-limits
OUT=${PROFILE_OUT:-$ROOT/bench-results/profile-$api_tag$MODE-c$CONNS$limits_tag.md}
mkdir -p "$(dirname "$OUT")"
{
  echo "### Profile: $API $MODE, c=$CONNS, usage reporting $USAGE, limits $LIMITS ($(date -u '+%Y-%m-%d'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo
  echo "wrk: $line"
  echo
  echo "CPU samples of the drover process by thread:"
  echo
  echo '```'
  { perf report -i "$TMP/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -10; } || true
  echo '```'
  echo
  echo "Hottest functions (self time, all threads):"
  echo
  echo '```'
  { perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' |
    head -n "$TOP" | cut -c1-160; } || true
  echo '```'
  echo
  echo "Requests in the run: ${requests:-unknown}."
} >"$TMP/report.md"
cp "$TMP/report.md" "$OUT"
log "written to ${OUT#"$ROOT"/}"
cat "$OUT"
