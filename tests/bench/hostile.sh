#!/usr/bin/env bash
# Drover under hostile load: what callers can make the gateway hold, and whether its memory comes back once
# they stop. One command, rerunnable on any Linux machine:
#
#   bash tests/bench/hostile.sh
#
# It builds drover, drover-mock and drover-hostile (release), starts drover-mock and `drover serve
# --max-connections N` on free ports, adds the mock as provider `mock` and routes bench-model to it with the CLI,
# then runs drover-hostile against the data plane: slowloris heads, idle keep-alive connections, held request
# bodies, unique model names and the connection cap, reading the gateway's RSS every 50 ms (the scenarios are
# described in tests/src/bin/drover-hostile.rs). The rule it checks: everything a caller can make Drover hold is
# bounded, and 10 s after a hostile load ends, RSS is within 64 MiB of idle. It prints a Markdown report and
# writes it to bench-results/hostile.md. About four minutes, most of it waiting for the idle timeout (75 s).
#
# Environment (all optional):
#   HOSTILE_MAX_CONNECTIONS  the gateway's --max-connections, which the cap scenario fills (default 2500: the
#                            idle scenario holds 2,000 connections at once, below the cap)
#   HOSTILE_IDLE_WAIT        longest wait, in seconds, for the gateway to close idle keep-alive connections
#                            (default 90; its idle timeout is 75 s unless HOSTILE_SERVE_ARGS changes it)
#   HOSTILE_SETTLE           seconds after each load before RSS is read again (default 10)
#   HOSTILE_SCENARIOS        a comma-separated subset of slowloris,idle,bodies,models,cap (default all)
#   HOSTILE_ARGS             more drover-hostile flags (drover-hostile --help)
#   HOSTILE_SERVE_ARGS       more `drover serve` flags, e.g. "--idle-timeout 20" with HOSTILE_IDLE_WAIT=30
#   HOSTILE_PROFILE          cargo profile to build and run (default release; dev only to try the tool itself:
#                            its memory figures mean nothing)
#   HOSTILE_OUT              result file (default bench-results/hostile.md)
#   CARGO_TARGET_DIR         where cargo builds (default target/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

MAX_CONNECTIONS=${HOSTILE_MAX_CONNECTIONS:-2500}
IDLE_WAIT=${HOSTILE_IDLE_WAIT:-90}
SETTLE=${HOSTILE_SETTLE:-10}
SCENARIOS=${HOSTILE_SCENARIOS:-slowloris,idle,bodies,models,cap}
PROFILE=${HOSTILE_PROFILE:-release}
OUT=${HOSTILE_OUT:-$ROOT/bench-results/hostile.md}
ADMIN_TOKEN=bench-token
read -r -a EXTRA_ARGS <<<"${HOSTILE_ARGS:-}"
read -r -a SERVE_ARGS <<<"${HOSTILE_SERVE_ARGS:-}"
case $PROFILE in
  release) BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release ;;
  dev) BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug ;;
  *) printf '[hostile] error: HOSTILE_PROFILE is release or dev, not %s\n' "$PROFILE" >&2; exit 1 ;;
esac

LOG_TAG=hostile
TMP_NAME=drover-hostile
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

command -v curl >/dev/null || die "curl is needed (apt-get install curl)"

# ---- open files -------------------------------------------------------------------------------------------
# The gateway lowers --max-connections to half its open-file limit, and drover-hostile holds as many
# connections as the gateway (the idle scenario 2,000): raise the soft limit when it is lower than that needs.
need=$((2 * (MAX_CONNECTIONS > 2000 ? MAX_CONNECTIONS : 2000) + 1024))
soft=$(ulimit -Sn)
if [[ $soft != unlimited ]] && ((soft < need)); then
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] || ((hard >= need)) ||
    die "the open-file limit (hard $hard) is below the $need these scenarios need; lower HOSTILE_MAX_CONNECTIONS"
  ulimit -Sn "$need"
  log "open-file limit raised from $soft to $need"
fi

# ---- build ------------------------------------------------------------------------------------------------
log "building ($PROFILE): cargo build --profile $PROFILE --bin drover --bin drover-mock --bin drover-hostile"
cargo build --profile "$PROFILE" --bin drover --bin drover-mock --bin drover-hostile

# ---- the mock provider ------------------------------------------------------------------------------------
"$BIN/drover-mock" --addr 127.0.0.1:0 >"$TMP/mock.addr" 2>"$TMP/mock.log" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
for _ in $(seq 100); do [[ -s $TMP/mock.addr ]] && break; sleep 0.1; done
MOCK_ADDR=$(head -n1 "$TMP/mock.addr")
[[ -n $MOCK_ADDR ]] || { cat "$TMP/mock.log" >&2; die "drover-mock did not start"; }
CHAT='{"model":"bench-model","max_tokens":8,"messages":[{"role":"user","content":"Say hello."}]}'
wait_200 10 "$MOCK_PID" -X POST -H 'content-type: application/json' --data "$CHAT" \
  "http://$MOCK_ADDR/v1/chat/completions" || die "drover-mock does not answer"
log "drover-mock on $MOCK_ADDR"

# ---- Drover -----------------------------------------------------------------------------------------------
HTTP=$(free_port)
GRPC=$(free_port)
SERVE_FLAGS=(--max-connections "$MAX_CONNECTIONS" "${SERVE_ARGS[@]}")
DROVER_ADMIN_TOKEN=$ADMIN_TOKEN RUST_LOG=${RUST_LOG:-warn} "$BIN/drover" serve --db "$TMP/drover.db" \
  --http "127.0.0.1:$HTTP" --grpc "127.0.0.1:$GRPC" "${SERVE_FLAGS[@]}" >"$TMP/drover.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_200 60 "$GW_PID" "http://127.0.0.1:$HTTP/readyz" ||
  { tail -30 "$TMP/drover.log" >&2; die "drover serve did not become ready"; }
cli() { "$BIN/drover" --server "http://127.0.0.1:$GRPC" --token "$ADMIN_TOKEN" "$@"; }
cli provider add mock --kind openai-compatible --base-url "http://$MOCK_ADDR/v1" >/dev/null
cli route set bench-model --target mock/bench-model >/dev/null
wait_200 30 "$GW_PID" -X POST -H 'content-type: application/json' --data "$CHAT" \
  "http://127.0.0.1:$HTTP/v1/chat/completions" ||
  { tail -30 "$TMP/drover.log" >&2; die "a chat completion through drover does not succeed"; }
grep -q 'lowered_to' "$TMP/drover.log" && { grep 'lowered_to' "$TMP/drover.log" >&2; die "drover lowered --max-connections"; }
log "drover serve on 127.0.0.1:$HTTP (pid $GW_PID, ${SERVE_FLAGS[*]})"

# ---- run --------------------------------------------------------------------------------------------------
started=$SECONDS
"$BIN/drover-hostile" --gateway "http://127.0.0.1:$HTTP" --pid "$GW_PID" --model bench-model \
  --direct-provider mock --max-connections "$MAX_CONNECTIONS" --idle-wait "$IDLE_WAIT" --settle "$SETTLE" \
  --scenarios "$SCENARIOS" "${EXTRA_ARGS[@]}" >"$TMP/hostile.out"
kill -0 "$GW_PID" 2>/dev/null || { tail -30 "$TMP/drover.log" >&2; die "drover serve exited during the run"; }

# ---- report -----------------------------------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
peak_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
{
  echo "## Hostile load"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC') · ${cpu:-unknown CPU} · $(nproc) cores · commit $commit · $PROFILE build"
  echo
  echo "\`drover serve ${SERVE_FLAGS[*]}\` (other bounds at their defaults) with the drover-mock provider, and"
  echo "drover-hostile, all on this machine over 127.0.0.1. RSS is the gateway process's VmRSS (both planes),"
  echo "sampled every 50 ms; each scenario starts once the gateway reports no open connection, and its last"
  echo "reading is taken $SETTLE s after the load ended. Run time $((SECONDS - started)) s."
  echo
  cat "$TMP/hostile.out"
  echo
  printf 'Drover (`drover serve`): peak RSS %.1f MiB over the whole run (VmHWM).\n' \
    "$(awk -v kb="$peak_kb" 'BEGIN {print kb / 1024}')"
} >"$TMP/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$TMP/report.md" "$OUT"
echo
cat "$OUT"
echo
log "written to ${OUT#"$ROOT"/}"
