#!/usr/bin/env bash
# Drover load benchmark. One command, rerunnable on any Debian/Ubuntu machine (as root, or with sudo):
#
#   bash tests/bench/run.sh
#
# It measures the same fast mock provider (drover-mock) three ways: called directly, behind nginx (a tuned
# reverse proxy: the baseline for what any proxy hop costs), and behind Drover (`drover serve`, proxy-only
# mode), for non-stream and stream chat completions at concurrency 1 and 64, with wrk. A fourth target,
# drover-anthropic, sends the same conversation as an Anthropic Messages request (`POST /v1/messages`) to the
# same Drover instance, which translates it to OpenAI chat for the mock and translates the answer back; the
# report adds the cost of that translation next to the same-format drover rows. drover-responses sends the same
# conversation as an OpenAI Responses request (`POST /v1/responses`) and drover-structured as a chat completion
# with a JSON schema `response_format`, both to an alias whose provider speaks Anthropic Messages (the same mock):
# Drover translates the first through the canonical model and sends the second as a forced tool, whose call it
# turns back into the text. drover-structured-native sends that request to an alias whose model is Claude 4.5
# (`claude-sonnet-4-5`), which gets Anthropic's own structured output (`output_config.format`) instead. A second
# Drover instance,
# drover-no-usage (`drover serve --usage-reporting off`: requests are metered but no usage records are kept),
# is measured right after drover, and the report gives the cost of usage reporting as the req/s ratio of the
# two. drover-auth is a third instance with the auth module on and BENCH_AUTH_KEYS virtual keys (default 100,000)
# in its policy; its requests carry one of them. Then drover-auth alternates runs with and without 100 key changes
# per second (BENCH_CHURN_ROUNDS rounds, non-stream, each concurrency), for the p99 a request sees while keys change;
# and drover-keys-bench measures key delivery (how fast, how many bytes, how much memory), and the admin API with
# its audit log (key creations per second, each with its audit record; `VerifyAudit` over a long chain). drover-limits is a fourth
# instance with auth, rate_limit and spend_cap on and BENCH_LIMIT_KEYS keys (default 10,000), each key and their
# tenant with rate limits, a concurrency limit and a spend cap far above what the run can use (a price is set for
# bench-model, as a cap refuses unpriced models): the report gives its cost against proxy-only drover and the lease
# traffic of its data plane (drover_lease_messages_total per second of each measured run), and the run fails,
# after the report, if any of its requests was refused or let through without a lease (fail-open). It writes a
# Markdown report (tables, plus Drover's peak RSS) to bench-results/latest.md and prints it on stdout once the run
# is over; progress goes to stderr only, so the two never mix in the report.
#
# Environment (all optional):
#   BENCH_DURATION      length of each measured run, wrk syntax (default 10s)
#   BENCH_WARMUP        unmeasured warm-up before each run (default 2s)
#   BENCH_CONCURRENCY   connection counts (default "1 64")
#   BENCH_TARGETS       any of "direct nginx drover drover-no-usage drover-anthropic drover-responses
#                       drover-structured drover-structured-native drover-cached drover-auth drover-limits"
#                       (default all eleven)
#   BENCH_MODES         any of "non-stream stream" (default both)
#   BENCH_USAGE_ROUNDS  extra alternating drover / drover-no-usage runs (non-stream, highest concurrency) for a
#                       steadier usage reporting cost: the median of their req/s ratios (default 3; 0: none)
#   BENCH_AUTH_KEYS     virtual keys in drover-auth's policy, and for the key delivery measurement (default 100000)
#   BENCH_LIMIT_KEYS    virtual keys of drover-limits, each with its own limits and cap (default 10000)
#   BENCH_CHURN_ROUNDS  rounds of drover-auth with and without key churn (default 2; 0: none)
#   BENCH_CHURN_RATE    key changes per second during the churn runs (default 100)
#   BENCH_AUDIT_RECORDS records in the audit chain `VerifyAudit` walks (default 1000000; 0: skip the audit part)
#   BENCH_SPLIT_ROUNDS  rounds of the split deployment: drover-controlplane and two drover-dataplane processes,
#                       usage reporting on and off, alternating (non-stream, highest concurrency); reports
#                       each data plane's CPU per request and the control plane's per record (default 3; 0: none)
#   BENCH_NGINX_WORKERS nginx worker_processes (default auto)
#   BENCH_OUT           result file (default bench-results/latest.md)
#   BENCH_README        1: also put the report into README.md, between its `<!-- bench-report:start -->` and
#                       `<!-- bench-report:end -->` lines (nothing else is touched)
#   CARGO_TARGET_DIR    where cargo builds (default target/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONCURRENCY=${BENCH_CONCURRENCY:-"1 64"}
TARGETS=${BENCH_TARGETS:-"direct nginx drover drover-no-usage drover-anthropic drover-responses drover-structured drover-structured-native drover-cached drover-auth drover-limits"}
AUTH_KEYS=${BENCH_AUTH_KEYS:-100000}
LIMIT_KEYS=${BENCH_LIMIT_KEYS:-10000}
CHURN_ROUNDS=${BENCH_CHURN_ROUNDS:-2}
CHURN_RATE=${BENCH_CHURN_RATE:-100}
AUDIT_RECORDS=${BENCH_AUDIT_RECORDS:-1000000}
MODES=${BENCH_MODES:-"non-stream stream"}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-auto}
USAGE_ROUNDS=${BENCH_USAGE_ROUNDS:-3}
SPLIT_ROUNDS=${BENCH_SPLIT_ROUNDS:-3}
OUT=${BENCH_OUT:-$ROOT/bench-results/latest.md}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ADMIN_TOKEN=bench-token

LOG_TAG=bench
TMP_NAME=drover-bench
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
chmod 755 "$TMP" # nginx workers drop root and must reach their files here
wants() { [[ " $TARGETS " == *" $1 "* ]]; }
wants_drover() {
  wants drover || wants drover-anthropic || wants drover-cached || wants drover-no-usage || wants drover-auth ||
    wants drover-limits || wants drover-responses || wants drover-structured || wants drover-structured-native
}

# ---- tools ------------------------------------------------------------------------------------------------
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if wants nginx && [[ -z $NGINX ]]; then missing+=(nginx-light); fi
if ((${#missing[@]})); then
  SUDO=()
  [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
  log "installing ${missing[*]}"
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >"$TMP/apt.log" 2>&1; then
    "${SUDO[@]}" apt-get update >>"$TMP/apt.log" 2>&1 || true
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$TMP/apt.log" 2>&1 ||
      { tail -20 "$TMP/apt.log" >&2; die "could not install ${missing[*]}"; }
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi

# ---- build ------------------------------------------------------------------------------------------------
bins=(--bin drover-mock)
wants_drover && bins+=(--bin drover)
((SPLIT_ROUNDS > 0)) && bins+=(--bin drover --bin drover-controlplane --bin drover-dataplane)
wants drover-auth && bins+=(--bin drover-keys-bench --bin drover-dataplane)
wants drover-limits && bins+=(--bin drover-keys-bench)
((AUDIT_RECORDS > 0)) && bins+=(--bin drover-keys-bench)
log "building release: cargo build --release ${bins[*]}"
cargo build --release "${bins[@]}"

# ---- request bodies (~1 KB) -------------------------------------------------------------------------------
filler=$(printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 19))
body() {
  printf '{"model":"bench-model","max_tokens":64,"stream":%s,"messages":[' "$1"
  printf '{"role":"system","content":"You are a helpful assistant. Answer in one short paragraph."},'
  printf '{"role":"user","content":"Summarize this text: %s"}]}' "$filler"
}
body false >"$TMP/non-stream.json"
body true >"$TMP/stream.json"
BODY_BYTES=$(wc -c <"$TMP/non-stream.json")
# The same conversation as an Anthropic Messages request (system prompt at the top level).
anthropic_body() {
  printf '{"model":"bench-model","max_tokens":64,'
  [[ $1 == true ]] && printf '"stream":true,'
  printf '"system":"You are a helpful assistant. Answer in one short paragraph.",'
  printf '"messages":[{"role":"user","content":"Summarize this text: %s"}]}' "$filler"
}
anthropic_body false >"$TMP/anthropic-non-stream.json"
anthropic_body true >"$TMP/anthropic-stream.json"
ANTHROPIC_BODY_BYTES=$(wc -c <"$TMP/anthropic-non-stream.json")
ANTHROPIC_HEADERS=$'anthropic-version: 2023-06-01\nx-api-key: bench'
# The same conversation as an OpenAI Responses request, to the alias whose provider speaks Anthropic Messages.
responses_body() {
  printf '{"model":"bench-claude","max_output_tokens":64,"stream":%s,' "$1"
  printf '"instructions":"You are a helpful assistant. Answer in one short paragraph.",'
  printf '"input":"Summarize this text: %s"}' "$filler"
}
responses_body false >"$TMP/responses-non-stream.json"
responses_body true >"$TMP/responses-stream.json"
RESPONSES_BODY_BYTES=$(wc -c <"$TMP/responses-non-stream.json")
# The same chat request asking for structured output (a JSON schema), to that alias.
for mode in non-stream stream; do
  sed 's/"bench-model"/"bench-claude"/; s/^{/{"response_format":{"type":"json_schema","json_schema":{"name":"summary","schema":{"type":"object","properties":{"summary":{"type":"string"}},"required":["summary"]}}},/' \
    "$TMP/$mode.json" >"$TMP/structured-$mode.json"
  sed 's/"bench-claude"/"bench-claude-native"/' "$TMP/structured-$mode.json" >"$TMP/structured-native-$mode.json"
done
# The same chat request to an alias whose answers are cached: every request after the first is a hit.
for mode in non-stream stream; do
  sed 's/"bench-model"/"bench-cached"/' "$TMP/$mode.json" >"$TMP/cached-$mode.json"
done

# What wrk sends per target: path, body file prefix (before "<mode>.json") and headers (see chat.lua).
declare -A TARGET_PATH=() TARGET_BODY=() TARGET_HEADERS=()
for target in direct nginx drover drover-no-usage; do
  TARGET_PATH[$target]=/v1/chat/completions TARGET_BODY[$target]="" TARGET_HEADERS[$target]="Authorization: Bearer bench"
done
TARGET_PATH[drover-anthropic]=/v1/messages
TARGET_BODY[drover-anthropic]=anthropic-
TARGET_HEADERS[drover-anthropic]=$ANTHROPIC_HEADERS
TARGET_PATH[drover-responses]=/v1/responses
TARGET_BODY[drover-responses]=responses-
TARGET_HEADERS[drover-responses]="Authorization: Bearer bench"
TARGET_PATH[drover-structured]=/v1/chat/completions
TARGET_BODY[drover-structured]=structured-
TARGET_HEADERS[drover-structured]="Authorization: Bearer bench"
TARGET_PATH[drover-structured-native]=/v1/chat/completions
TARGET_BODY[drover-structured-native]=structured-native-
TARGET_HEADERS[drover-structured-native]="Authorization: Bearer bench"
TARGET_PATH[drover-cached]=/v1/chat/completions
TARGET_BODY[drover-cached]=cached-
TARGET_HEADERS[drover-cached]="Authorization: Bearer bench"

# ---- the mock provider ------------------------------------------------------------------------------------
"$BIN/drover-mock" --addr 127.0.0.1:0 >"$TMP/mock.addr" 2>"$TMP/mock.log" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
for _ in $(seq 100); do [[ -s $TMP/mock.addr ]] && break; sleep 0.1; done
MOCK_ADDR=$(head -n1 "$TMP/mock.addr")
[[ -n $MOCK_ADDR ]] || { cat "$TMP/mock.log" >&2; die "drover-mock did not start"; }
wait_200 10 "$MOCK_PID" -X POST -H 'content-type: application/json' --data-binary "@$TMP/non-stream.json" \
  "http://$MOCK_ADDR/v1/chat/completions" || die "drover-mock does not answer"
log "drover-mock on $MOCK_ADDR"
declare -A URL=([direct]="http://$MOCK_ADDR")

# ---- nginx ------------------------------------------------------------------------------------------------
if wants nginx; then
  NGINX_PORT=$(free_port)
  mkdir -p "$TMP/nginx"
  temp_paths="client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;"
  nginx_build=$("$NGINX" -V 2>&1)
  for module in fastcgi uwsgi scgi; do
    [[ $nginx_build == *"--without-http_${module}_module"* ]] ||
      temp_paths+=" ${module}_temp_path $TMP/nginx/$module;"
  done
  cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  $temp_paths
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  upstream mock {
    server $MOCK_ADDR;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
  "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" >"$TMP/nginx/stdout.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_200 10 "$NGINX_PID" -X POST -H 'content-type: application/json' --data-binary "@$TMP/non-stream.json" \
    "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" ||
    { cat "$TMP/nginx/error.log" >&2; die "nginx did not start"; }
  log "nginx on 127.0.0.1:$NGINX_PORT (worker_processes $NGINX_WORKERS)"
  URL[nginx]="http://127.0.0.1:$NGINX_PORT"
fi

# ---- Drover -----------------------------------------------------------------------------------------------
# Starts `drover serve` as instance $1 (its own database and ports) with the extra flags that follow, routes
# bench-model (and bench-cached, cached) to the mock, and waits until a chat completion succeeds. Sets
# DROVER_PID and DROVER_HTTP.
start_drover() {
  local name=$1 http grpc pid
  shift
  http=$(free_port)
  grpc=$(free_port)
  DROVER_ADMIN_TOKEN=$ADMIN_TOKEN RUST_LOG=${RUST_LOG:-warn} "$BIN/drover" serve --db "$TMP/$name.db" \
    --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" "$@" >"$TMP/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_200 60 "$pid" "http://127.0.0.1:$http/readyz" ||
    { tail -30 "$TMP/$name.log" >&2; die "$name: drover serve did not become ready"; }
  cli() { "$BIN/drover" --server "http://127.0.0.1:$grpc" --token "$ADMIN_TOKEN" "$@"; }
  cli provider add mock --kind openai-compatible --base-url "http://$MOCK_ADDR/v1" >/dev/null
  cli route set bench-model --target mock/bench-model >/dev/null
  cli route set bench-cached --target mock/bench-model --cache-ttl 3600 >/dev/null
  cli provider add mock-anthropic --kind anthropic --base-url "http://$MOCK_ADDR/v1" --api-key bench >/dev/null
  cli route set bench-claude --target mock-anthropic/bench-model >/dev/null
  cli route set bench-claude-native --target mock-anthropic/claude-sonnet-4-5 >/dev/null
  wait_200 30 "$pid" -X POST -H 'content-type: application/json' --data-binary "@$TMP/non-stream.json" \
    "http://127.0.0.1:$http/v1/chat/completions" ||
    { tail -30 "$TMP/$name.log" >&2; die "$name: a chat completion through drover does not succeed"; }
  DROVER_PID=$pid DROVER_HTTP=$http DROVER_GRPC=$grpc
}

if wants drover-no-usage; then
  start_drover drover-no-usage --usage-reporting off
  log "drover-no-usage on 127.0.0.1:$DROVER_HTTP (usage reporting off)"
  URL[drover-no-usage]="http://127.0.0.1:$DROVER_HTTP"
fi
if wants drover-auth; then
  start_drover drover-auth
  AUTH_GRPC=$DROVER_GRPC
  log "drover-auth: creating $AUTH_KEYS virtual keys"
  AUTH_SECRET=$("$BIN/drover-keys-bench" seed --server "http://127.0.0.1:$AUTH_GRPC" --token "$ADMIN_TOKEN" \
    --keys "$AUTH_KEYS" 2>"$TMP/seed.log") || { cat "$TMP/seed.log" >&2; die "drover-auth: creating keys failed"; }
  log "  $(cat "$TMP/seed.log")"
  "$BIN/drover" --server "http://127.0.0.1:$AUTH_GRPC" --token "$ADMIN_TOKEN" module enable auth >/dev/null
  # Ready when a request without a key is refused and one with the key succeeds.
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
      --data-binary "@$TMP/non-stream.json" "http://127.0.0.1:$DROVER_HTTP/v1/chat/completions" || true)
    [[ $code == 401 ]] && break
    sleep 0.1
  done
  [[ $code == 401 ]] || die "drover-auth: a request without a key answered $code, not 401"
  wait_200 10 "$DROVER_PID" -X POST -H 'content-type: application/json' -H "authorization: Bearer $AUTH_SECRET" \
    --data-binary "@$TMP/non-stream.json" "http://127.0.0.1:$DROVER_HTTP/v1/chat/completions" ||
    die "drover-auth: a request with a key does not succeed"
  AUTH_PID=$DROVER_PID
  log "drover-auth on 127.0.0.1:$DROVER_HTTP (auth on, $AUTH_KEYS keys)"
  URL[drover-auth]="http://127.0.0.1:$DROVER_HTTP"
  TARGET_PATH[drover-auth]=/v1/chat/completions TARGET_BODY[drover-auth]=""
  TARGET_HEADERS[drover-auth]="Authorization: Bearer $AUTH_SECRET"
fi
if wants drover-limits; then
  start_drover drover-limits
  LIMITS_PID=$DROVER_PID LIMITS_HTTP=$DROVER_HTTP LIMITS_GRPC=$DROVER_GRPC
  limits_cli() { "$BIN/drover" --server "http://127.0.0.1:$LIMITS_GRPC" --token "$ADMIN_TOKEN" "$@"; }
  # A cap refuses a model without a price, and the mock's bench-model has no built-in one.
  limits_cli price set bench-model --input 0.15 --output 0.6 >/dev/null
  # Limits and caps far above what a run can use (rpm and tpm at their largest, 10^12; 100,000 requests in flight;
  # 1M USD in total), on the tenant and on every key: each request takes from all of them, and none is refused.
  LIMIT_RATE=1000000000000 LIMIT_CONCURRENCY=100000 LIMIT_CAP_NANO_USD=1000000000000000
  log "drover-limits: creating $LIMIT_KEYS virtual keys, with limits and a cap on each and on their tenant"
  LIMITS_SECRET=$("$BIN/drover-keys-bench" seed --server "http://127.0.0.1:$LIMITS_GRPC" --token "$ADMIN_TOKEN" \
    --keys "$LIMIT_KEYS" --rpm "$LIMIT_RATE" --tpm "$LIMIT_RATE" --limit-concurrency "$LIMIT_CONCURRENCY" \
    --cap-nano-usd "$LIMIT_CAP_NANO_USD" --tenant-rpm "$LIMIT_RATE" --tenant-tpm "$LIMIT_RATE" \
    --tenant-limit-concurrency "$LIMIT_CONCURRENCY" --tenant-cap-nano-usd "$LIMIT_CAP_NANO_USD" --cap-period total \
    2>"$TMP/limits-seed.log") || { cat "$TMP/limits-seed.log" >&2; die "drover-limits: creating keys and limits failed"; }
  while read -r seed_line; do log "  $seed_line"; done <"$TMP/limits-seed.log"
  for module in rate_limit spend_cap auth; do limits_cli module enable "$module" >/dev/null; done
  # The policy with all three modules on has reached the data plane when it serves the control plane's version.
  policy_version=$(limits_cli status --json | grep -o '"version": *[0-9]*' | head -n1 | grep -o '[0-9]*$')
  [[ -n $policy_version ]] || die "drover-limits: no policy version in \`drover status --json\`"
  served=0
  for _ in $(seq 300); do
    served=$(curl -s --max-time 5 "http://127.0.0.1:$LIMITS_HTTP/metrics" |
      awk '$1 == "drover_policy_version" { v = $2 } END { print v + 0 }')
    ((served >= policy_version)) && break
    sleep 0.1
  done
  ((served >= policy_version)) || die "drover-limits: the data plane serves policy version $served, not $policy_version"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    --data-binary "@$TMP/non-stream.json" "http://127.0.0.1:$LIMITS_HTTP/v1/chat/completions" || true)
  [[ $code == 401 ]] || die "drover-limits: a request without a key answered $code, not 401"
  # Counters of its data plane, one line: lease messages sent, requests rate limited, refused by a spend cap, and let
  # through without a lease (fail-open).
  limits_counters() {
    curl -sf --max-time 5 "http://127.0.0.1:$LIMITS_HTTP/metrics" | awk '
      $1 == "drover_lease_messages_total" { m = $2; seen = 1 }
      $1 == "drover_rate_limited_total" { r = $2 }
      $1 == "drover_spend_cap_refused_total" { s = $2 }
      $1 == "drover_limits_fail_open_total" { f = $2 }
      END { if (!seen) exit 1; printf "%d %d %d %d\n", m, r, s, f }'
  }
  # Ready when a request with a key succeeds through the leases: not refused, and not let through by fail-open
  # (a control plane just started can take a moment to grant).
  ready=""
  for _ in $(seq 100); do
    read -r _ r0 s0 f0 < <(limits_counters) || die "drover-limits: no lease counters in /metrics"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
      -H "authorization: Bearer $LIMITS_SECRET" --data-binary "@$TMP/non-stream.json" \
      "http://127.0.0.1:$LIMITS_HTTP/v1/chat/completions" || true)
    read -r m1 r1 s1 f1 < <(limits_counters) || die "drover-limits: no lease counters in /metrics"
    if [[ $code == 200 ]] && ((m1 > 0 && r1 == r0 && s1 == s0 && f1 == f0)); then ready=1; break; fi
    sleep 0.2
  done
  [[ -n $ready ]] || { tail -30 "$TMP/drover-limits.log" >&2
    die "drover-limits: a request with a key answered $code (rate limited $((r1 - r0)), spend cap $((s1 - s0)), fail-open $((f1 - f0))), not 200 through the leases"; }
  log "drover-limits on 127.0.0.1:$LIMITS_HTTP (auth, rate_limit and spend_cap on, $LIMIT_KEYS keys)"
  URL[drover-limits]="http://127.0.0.1:$LIMITS_HTTP"
  TARGET_PATH[drover-limits]=/v1/chat/completions TARGET_BODY[drover-limits]=""
  TARGET_HEADERS[drover-limits]="Authorization: Bearer $LIMITS_SECRET"
fi
if wants drover || wants drover-anthropic || wants drover-cached || wants drover-responses || wants drover-structured ||
  wants drover-structured-native; then
  start_drover drover
  GW_PID=$DROVER_PID HTTP_PORT=$DROVER_HTTP
  # Responses and structured output through the Anthropic-format alias: one request of each mode must come back
  # whole before anything is measured.
  check_translated() { # target, path, body file, pattern the answer must hold, last stream line wanted
    local target=$1 path=$2 file=$3 pattern=$4 last=$5 code tail_line
    code=$(curl -s --max-time 10 -X POST -H 'content-type: application/json' -o "$TMP/check-$target.out" \
      -w '%{http_code}' --data-binary "@$TMP/$file-non-stream.json" "http://127.0.0.1:$HTTP_PORT$path" || true)
    if [[ $code != 200 ]] || ! grep -Eq "$pattern" "$TMP/check-$target.out"; then
      head -c 2000 "$TMP/check-$target.out" >&2; echo >&2; tail -30 "$TMP/drover.log" >&2
      die "$target: a non-stream POST $path answered HTTP $code, not 200 matching /$pattern/"
    fi
    code=$(curl -s -N --max-time 10 -X POST -H 'content-type: application/json' -o "$TMP/check-$target-stream.out" \
      -w '%{http_code}' --data-binary "@$TMP/$file-stream.json" "http://127.0.0.1:$HTTP_PORT$path" || true)
    tail_line=$(grep -E '^(event|data):' "$TMP/check-$target-stream.out" | grep -F "$last" | tail -n1 || true)
    if [[ $code != 200 || -z $tail_line ]]; then
      head -c 4000 "$TMP/check-$target-stream.out" >&2; echo >&2; tail -30 "$TMP/drover.log" >&2
      die "$target: a stream POST $path answered HTTP $code without '$last'"
    fi
  }
  if wants drover-responses; then
    check_translated drover-responses /v1/responses responses '"status" *: *"completed"' 'event: response.completed'
    RESPONSES_EVENTS=$(grep -c '^event:' "$TMP/check-drover-responses-stream.out" || true)
    log "drover-responses: translated non-stream and stream answers check out"
  fi
  if wants drover-structured; then
    check_translated drover-structured /v1/chat/completions structured '"finish_reason" *: *"stop"' 'data: [DONE]'
    grep -q 'tool_calls' "$TMP/check-drover-structured.out" &&
      die "drover-structured: the forced tool's call reached the caller as a tool call"
    log "drover-structured: structured output through a forced tool checks out"
  fi
  if wants drover-structured-native; then
    check_translated drover-structured-native /v1/chat/completions structured-native '"finish_reason" *: *"stop"' \
      'data: [DONE]'
    log "drover-structured-native: structured output through output_config.format checks out"
  fi
  if wants drover-anthropic; then
    # One request of each mode through the translation must come back whole before anything is measured.
    anthropic_curl=(curl -s --max-time 10 -X POST -H 'anthropic-version: 2023-06-01' -H 'x-api-key: bench'
      -H 'content-type: application/json')
    code=$("${anthropic_curl[@]}" -o "$TMP/check-non-stream.out" -w '%{http_code}' \
      --data-binary "@$TMP/anthropic-non-stream.json" "http://127.0.0.1:$HTTP_PORT/v1/messages" || true)
    if [[ $code != 200 ]] || ! grep -Eq '"type" *: *"message"' "$TMP/check-non-stream.out"; then
      head -c 2000 "$TMP/check-non-stream.out" >&2; echo >&2; tail -30 "$TMP/drover.log" >&2
      die "drover-anthropic: a non-stream POST /v1/messages answered HTTP $code, not 200 with an Anthropic message (\"type\":\"message\")"
    fi
    code=$("${anthropic_curl[@]}" -N -o "$TMP/check-stream.out" -w '%{http_code}' \
      --data-binary "@$TMP/anthropic-stream.json" "http://127.0.0.1:$HTTP_PORT/v1/messages" || true)
    last_event=$(grep '^event:' "$TMP/check-stream.out" | tail -n1 | tr -d '\r' || true)
    if [[ $code != 200 || $last_event != "event: message_stop" ]]; then
      head -c 4000 "$TMP/check-stream.out" >&2; echo >&2; tail -30 "$TMP/drover.log" >&2
      die "drover-anthropic: a stream POST /v1/messages answered HTTP $code with last event '${last_event:-none}', not 200 ending in 'event: message_stop'"
    fi
    ANTHROPIC_EVENTS=$(grep -c '^event:' "$TMP/check-stream.out" || true)
    log "drover-anthropic: translated non-stream and stream answers check out"
  fi
  IDLE_RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status")
  log "drover on 127.0.0.1:$HTTP_PORT"
  URL[drover]="http://127.0.0.1:$HTTP_PORT"
  URL[drover-anthropic]="http://127.0.0.1:$HTTP_PORT"
  URL[drover-cached]="http://127.0.0.1:$HTTP_PORT"
  URL[drover-responses]="http://127.0.0.1:$HTTP_PORT"
  URL[drover-structured]="http://127.0.0.1:$HTTP_PORT"
  URL[drover-structured-native]="http://127.0.0.1:$HTTP_PORT"
fi

# ---- runs -------------------------------------------------------------------------------------------------
# Runs wrk against target $1 in mode $2 with $3 connections for $4 (default: the warm-up, then the measured run);
# prints the BENCH line of chat.lua, or the wrk output to stderr and nothing if the run failed.
measure() {
  local target=$1 mode=$2 conns=$3 only=${4:-} threads out line run
  threads=$((conns < NPROC ? conns : NPROC))
  run=(wrk -t "$threads" -c "$conns" --timeout 10s --latency -s "$ROOT/tests/bench/chat.lua")
  export BENCH_BODY_FILE="$TMP/${TARGET_BODY[$target]}$mode.json" BENCH_PATH=${TARGET_PATH[$target]} \
    BENCH_HEADERS=${TARGET_HEADERS[$target]}
  if [[ $only == warm-up ]]; then
    log "$target $mode c=$conns: warm-up $WARMUP"
    "${run[@]}" -d "$WARMUP" "${URL[$target]}" >/dev/null 2>&1 || true
    return 0
  fi
  if [[ $only != measured ]]; then
    log "$target $mode c=$conns: warm-up $WARMUP, then $DURATION"
    "${run[@]}" -d "$WARMUP" "${URL[$target]}" >/dev/null 2>&1 || true
  fi
  out="$TMP/wrk-$target-$mode-$conns.txt"
  "${run[@]}" -d "$DURATION" "${URL[$target]}" >"$out" 2>&1 || true
  line=$(grep '^BENCH ' "$out" || true)
  [[ -n $line ]] || { cat "$out" >&2; return 1; }
  echo "$line"
}

# req/s of a BENCH line.
rps_of() { awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] + 0 } printf "%.1f\n", f["requests"] * 1e6 / f["duration_us"] }' <<<"$1"; }

NPROC=$(nproc)
ROWS=()
declare -A RPS=() P50=() # by "target mode conns", for the translation cost lines
LEASE_LINES=() LIMITS_REFUSED=() # drover-limits: lease traffic per measured run; runs with refusals or fail-opens
LIMITS_TOTALS=(0 0 0) # drover-limits: rate limited, spend cap refused, fail-open, over all its runs and warm-ups
for target in $TARGETS; do
  [[ -n ${URL[$target]:-} ]] ||
    die "unknown target '$target' (expected direct, nginx, drover, drover-no-usage, drover-anthropic, drover-responses, drover-structured, drover-structured-native, drover-cached, drover-auth or drover-limits)"
  for mode in $MODES; do
    [[ -f $TMP/$mode.json ]] || die "unknown mode '$mode' (expected non-stream or stream)"
    for conns in $CONCURRENCY; do
      if [[ $target == drover-limits ]]; then
        # The data plane's counters before the warm-up, between it and the measured run, and after.
        before=$(limits_counters) || die "drover-limits: /metrics does not answer"
        measure "$target" "$mode" "$conns" warm-up
        between=$(limits_counters) || die "drover-limits: /metrics does not answer"
        log "$target $mode c=$conns: $DURATION"
        started=${EPOCHREALTIME/[.,]/} # µs
        line=$(measure "$target" "$mode" "$conns" measured) || true
        ended=${EPOCHREALTIME/[.,]/}
        after=$(limits_counters) || die "drover-limits: /metrics does not answer"
        read -r _ r0 s0 f0 <<<"$before"
        read -r m1 _ <<<"$between"
        read -r m2 r2 s2 f2 <<<"$after"
        LIMITS_TOTALS=($((LIMITS_TOTALS[0] + r2 - r0)) $((LIMITS_TOTALS[1] + s2 - s0)) $((LIMITS_TOTALS[2] + f2 - f0)))
        if ((r2 > r0 || s2 > s0 || f2 > f0)); then
          LIMITS_REFUSED+=("$mode c=$conns: rate limited $((r2 - r0)), spend cap refused $((s2 - s0)), fail-open $((f2 - f0))")
          log "  drover-limits: ${LIMITS_REFUSED[-1]} (must all be 0)"
        fi
        if [[ -n $line ]]; then
          LEASE_LINES+=("$(awk -v mode="$mode" -v conns="$conns" -v n=$((m2 - m1)) -v t0="$started" -v t1="$ended" '{
              for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] + 0 }
              secs = (t1 - t0) / 1e6
              printf "- %s, c=%d: %.1f lease messages/s (%d in %.1f s; %.3f per 1,000 requests)", mode, conns,
                n / secs, n, secs, (f["requests"] > 0 ? 1000 * n / f["requests"] : 0)
            }' <<<"$line")")
          log "  drover-limits lease traffic ${LEASE_LINES[-1]#- }"
        fi
      else
        line=$(measure "$target" "$mode" "$conns") || true
      fi
      if [[ -z $line ]]; then
        ROWS+=("| $target | $mode | $conns | failed | | | |")
        continue
      fi
      ROWS+=("$(awk -v target="$target" -v mode="$mode" -v conns="$conns" '
        function field(name,   i, kv) {
          for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] + 0 }
          return 0
        }
        function lat(us) { return us < 1000 ? sprintf("%d µs", us) : sprintf("%.2f ms", us / 1000) }
        {
          rps = field("requests") * 1e6 / field("duration_us")
          socket = field("connect") + field("read") + field("write") + field("timeout")
          status = field("status")
          errors = socket + status
          detail = ""
          if (errors > 0) detail = sprintf(" (non-2xx %d, socket %d)", status, socket)
          printf "| %s | %s | %d | %.0f | %s | %s | %d%s |", target, mode, conns, rps,
            lat(field("p50_us")), lat(field("p99_us")), errors, detail
        }' <<<"$line")")
      read -r rps p50 < <(awk '{
          for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] + 0 }
          printf "%.1f %.0f\n", f["requests"] * 1e6 / f["duration_us"], f["p50_us"]
        }' <<<"$line")
      RPS["$target $mode $conns"]=$rps P50["$target $mode $conns"]=$p50
      log "  ${ROWS[-1]}"
    done
  done
done

# Usage reporting cost, steadier: drover and drover-no-usage alternate, so drift over the run hits both alike.
USAGE_RATIOS=()
USAGE_TOP=$(tr ' ' '\n' <<<"$CONCURRENCY" | sort -n | tail -n1)
if wants drover && wants drover-no-usage && ((USAGE_ROUNDS > 0)) && [[ " $MODES " == *" non-stream "* ]]; then
  for ((round = 1; round <= USAGE_ROUNDS; round++)); do
    with=$(measure drover non-stream "$USAGE_TOP") || continue
    without=$(measure drover-no-usage non-stream "$USAGE_TOP") || continue
    USAGE_RATIOS+=("$(awk -v a="$(rps_of "$with")" -v b="$(rps_of "$without")" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')")
    log "  usage round $round: drover / drover-no-usage req/s ×${USAGE_RATIOS[-1]}"
  done
fi

# ---- key churn --------------------------------------------------------------------------------------------
# drover-auth with and without CHURN_RATE key changes per second (creates and revokes), alternating.
CHURN_LINES=()
if wants drover-auth && ((CHURN_ROUNDS > 0)) && [[ " $MODES " == *" non-stream "* ]]; then
  for conns in $CONCURRENCY; do
    for ((round = 1; round <= CHURN_ROUNDS; round++)); do
      quiet=$(measure drover-auth non-stream "$conns") || continue
      "$BIN/drover-keys-bench" churn --server "http://127.0.0.1:$AUTH_GRPC" --token "$ADMIN_TOKEN" \
        --rate "$CHURN_RATE" 2>"$TMP/churn.log" &
      churn_pid=$!
      busy=$(measure drover-auth non-stream "$conns") || true
      kill "$churn_pid" 2>/dev/null || true
      wait "$churn_pid" 2>/dev/null || true
      [[ -n $busy ]] || continue
      CHURN_LINES+=("$(awk -v conns="$conns" -v round="$round" -v rate="$CHURN_RATE" '
        function field(line, name,   n, parts, i, kv) {
          n = split(line, parts, " ")
          for (i = 2; i <= n; i++) { split(parts[i], kv, "="); if (kv[1] == name) return kv[2] + 0 }
          return 0
        }
        function lat(us) { return us < 1000 ? sprintf("%d µs", us) : sprintf("%.2f ms", us / 1000) }
        NR == 1 { q = $0 } NR == 2 { b = $0 }
        END {
          qp = field(q, "p99_us"); bp = field(b, "p99_us")
          qr = field(q, "requests") * 1e6 / field(q, "duration_us"); br = field(b, "requests") * 1e6 / field(b, "duration_us")
          printf "- c=%d, round %d: p99 %s with %d key changes/s vs %s without (%+.1f%%); req/s ×%.3f (%.0f vs %.0f)",
            conns, round, lat(bp), rate, lat(qp), (qp > 0 ? 100 * (bp - qp) / qp : 0), (qr > 0 ? br / qr : 0), br, qr
        }' <<<"$quiet
$busy")")
      log "  churn ${CHURN_LINES[-1]#- }"
    done
  done
fi
KEYS_REPORT=""
if wants drover-auth; then
  log "key delivery: drover-keys-bench --keys $AUTH_KEYS"
  KEYS_REPORT=$("$BIN/drover-keys-bench" --keys "$AUTH_KEYS" 2>"$TMP/keys-bench.log") ||
    { tail -20 "$TMP/keys-bench.log" >&2; KEYS_REPORT=""; log "key delivery measurement failed"; }
fi
AUDIT_REPORT=""
if ((AUDIT_RECORDS > 0)); then
  log "admin API and audit log: drover-keys-bench audit --records $AUDIT_RECORDS"
  AUDIT_REPORT=$("$BIN/drover-keys-bench" audit --records "$AUDIT_RECORDS" 2>"$TMP/audit-bench.log") ||
    { tail -20 "$TMP/audit-bench.log" >&2; AUDIT_REPORT=""; log "audit measurement failed"; }
fi

# ---- split deployment -------------------------------------------------------------------------------------
# A control plane process and two data plane processes, one with usage reporting off; the data planes' CPU time
# per request shows what reporting costs a data plane, the control plane's what ingesting a record costs.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
SPLIT_LINES=()
if ((SPLIT_ROUNDS > 0)) && [[ " $MODES " == *" non-stream "* ]]; then
  CP_GRPC=$(free_port)
  DROVER_ADMIN_TOKEN=$ADMIN_TOKEN DROVER_DATAPLANE_TOKEN=bench-dp RUST_LOG=${RUST_LOG:-warn} \
    "$BIN/drover-controlplane" --db "$TMP/split.db" --grpc "127.0.0.1:$CP_GRPC" >"$TMP/split-cp.log" 2>&1 &
  CP_PID=$!
  PIDS+=("$CP_PID")
  cli() { "$BIN/drover" --server "http://127.0.0.1:$CP_GRPC" --token "$ADMIN_TOKEN" "$@"; }
  for _ in $(seq 100); do cli status >/dev/null 2>&1 && break; sleep 0.1; done
  cli provider add mock --kind openai-compatible --base-url "http://$MOCK_ADDR/v1" >/dev/null
  cli route set bench-model --target mock/bench-model >/dev/null
  declare -A SPLIT_PID=()
  for target in dp dp-no-usage; do
    http=$(free_port)
    reporting=on
    [[ $target == dp-no-usage ]] && reporting=off
    RUST_LOG=${RUST_LOG:-warn} "$BIN/drover-dataplane" --control-plane "http://127.0.0.1:$CP_GRPC" --token bench-dp \
      --http "127.0.0.1:$http" --usage-reporting $reporting >"$TMP/split-$target.log" 2>&1 &
    SPLIT_PID[$target]=$!
    PIDS+=("$!")
    wait_200 30 "$!" -X POST -H 'content-type: application/json' --data-binary "@$TMP/non-stream.json" \
      "http://127.0.0.1:$http/v1/chat/completions" ||
      { tail -30 "$TMP/split-$target.log" >&2; die "$target: a chat completion through drover-dataplane does not succeed"; }
    URL[$target]="http://127.0.0.1:$http"
    TARGET_PATH[$target]=/v1/chat/completions TARGET_BODY[$target]="" TARGET_HEADERS[$target]="Authorization: Bearer bench"
  done
  TICK=$(getconf CLK_TCK)
  for ((round = 1; round <= SPLIT_ROUNDS; round++)); do
    result=""
    for target in dp dp-no-usage; do
      measure "$target" non-stream "$USAGE_TOP" warm-up
      dp0=$(cpu_ticks "${SPLIT_PID[$target]}") cp0=$(cpu_ticks "$CP_PID")
      line=$(measure "$target" non-stream "$USAGE_TOP" measured) || { result=""; break; }
      dp1=$(cpu_ticks "${SPLIT_PID[$target]}") cp1=$(cpu_ticks "$CP_PID")
      result+=" $(awk -v d=$((dp1 - dp0)) -v c=$((cp1 - cp0)) -v t="$TICK" '{
          for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] + 0 }
          n = f["requests"]
          printf "%.1f %.2f %.2f", n * 1e6 / f["duration_us"], d / t * 1e6 / n, c / t * 1e6 / n
        }' <<<"$line")"
    done
    [[ -n $result ]] || continue
    SPLIT_LINES+=("$(awk -v round="$round" '{
        printf "- round %d: req/s ×%.3f (%.0f vs %.0f); data plane CPU %.1f vs %.1f µs/request (%+.1f%%); control plane %.2f µs/record", round,
          $1 / $4, $1, $4, $2, $5, 100 * ($2 - $5) / $5, $3
      }' <<<"$result")")
    log "  split ${SPLIT_LINES[-1]#- }"
  done
fi

# ---- report -----------------------------------------------------------------------------------------------
# One line per mode and concurrency: target $1 against target $2, p50 difference and req/s ratio.
compare() {
  local mode conns a b
  for mode in $MODES; do
    for conns in $CONCURRENCY; do
      a="$1 $mode $conns" b="$2 $mode $conns"
      if [[ -z ${RPS[$a]:-} || -z ${RPS[$b]:-} ]]; then
        echo "- $mode, c=$conns: n/a (a run failed)"
        continue
      fi
      awk -v mode="$mode" -v conns="$conns" -v ap="${P50[$a]}" -v bp="${P50[$b]}" -v ar="${RPS[$a]}" -v br="${RPS[$b]}" '
        function lat(us) { return us < 1000 ? sprintf("%d µs", us) : sprintf("%.2f ms", us / 1000) }
        BEGIN {
          diff = ap - bp
          printf "- %s, c=%d: p50 %s%s (%s vs %s, %+.1f%%), req/s ×%.3f (%.0f vs %.0f)\n", mode, conns,
            (diff < 0 ? "-" : "+"), lat(diff < 0 ? -diff : diff), lat(ap), lat(bp), (bp > 0 ? 100 * diff / bp : 0),
            (br > 0 ? ar / br : 0), ar, br
        }'
    done
  done
}

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
mock_bytes=$(curl -s -X POST -H 'content-type: application/json' --data-binary "@$TMP/non-stream.json" \
  "http://$MOCK_ADDR/v1/chat/completions" | wc -c)
mock_events=$(curl -s -N -X POST -H 'content-type: application/json' --data-binary "@$TMP/stream.json" \
  "http://$MOCK_ADDR/v1/chat/completions" | grep -c '^data: ' || true)
{
  echo "### Latest run"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC') · ${cpu:-unknown CPU} · $NPROC cores · commit $commit"
  echo
  echo "wrk, $DURATION per run after a $WARMUP warm-up; \`POST /v1/chat/completions\` with a $BODY_BYTES-byte body."
  echo "The mock provider answers at once: $mock_bytes bytes non-stream, $mock_events SSE events when streaming."
  if wants drover-cached; then
    echo "drover-cached: the same chat request to an alias with \`--cache-ttl\`: after the first, every request is a"
    echo "cache hit (streams replayed from the cached answer); the mock is not called."
  fi
  if wants drover-anthropic; then
    echo "drover-anthropic: the same conversation as \`POST /v1/messages\` (Anthropic Messages, $ANTHROPIC_BODY_BYTES-byte body) to the"
    echo "same Drover instance and mock; Drover translates it to OpenAI chat and the answer back (an Anthropic"
    echo "\`message\`, or ${ANTHROPIC_EVENTS:-?} Anthropic SSE events ending in \`message_stop\` when streaming)."
  fi
  if wants drover-responses; then
    echo "drover-responses: the same conversation as \`POST /v1/responses\` (OpenAI Responses, $RESPONSES_BODY_BYTES-byte body) to an alias"
    echo "whose provider speaks Anthropic Messages (the same mock); Drover translates it through the canonical model and the"
    echo "answer back (a \`response\` object, or ${RESPONSES_EVENTS:-?} Responses SSE events ending in \`response.completed\`)."
  fi
  if wants drover-structured; then
    echo "drover-structured: the chat request with a JSON schema \`response_format\`, to that alias: sent as a forced tool, whose"
    echo "call comes back as the message content."
  fi
  if wants drover-structured-native; then
    echo "drover-structured-native: the same request to an alias whose model is \`claude-sonnet-4-5\`: sent as Anthropic's own"
    echo "structured output (\`output_config.format\`), whose text is the answer."
  fi
  echo "wrk, the proxy under test and the mock all share this machine's cores over 127.0.0.1."
  echo
  echo "| target | mode | concurrency | req/s | p50 | p99 | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  if wants drover && wants drover-anthropic; then
    echo
    echo "Translation cost (drover-anthropic vs same-format drover; p50 difference, req/s ratio):"
    echo
    compare drover-anthropic drover
  fi
  if wants drover && wants drover-responses; then
    echo
    echo "Responses translation cost (drover-responses, Responses in and Anthropic out, vs same-format drover; p50 difference, req/s ratio):"
    echo
    compare drover-responses drover
  fi
  if wants drover && wants drover-structured; then
    echo
    echo "Structured output cost (drover-structured, JSON schema through a forced Anthropic tool, vs same-format drover):"
    echo
    compare drover-structured drover
  fi
  if wants drover && wants drover-structured-native; then
    echo
    echo "Native structured output cost (drover-structured-native, JSON schema as Anthropic's output_config.format, vs same-format drover):"
    echo
    compare drover-structured-native drover
  fi
  if wants drover && wants drover-no-usage; then
    echo
    echo "Usage reporting cost (drover vs drover-no-usage, \`--usage-reporting off\`; p50 difference, req/s ratio):"
    echo
    compare drover drover-no-usage
  fi
  if ((${#USAGE_RATIOS[@]})); then
    median=$(printf '%s\n' "${USAGE_RATIOS[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    echo
    printf -- '- alternating rounds, non-stream, c=%s: req/s ×%s; median ×%.3f (%+.1f%%)\n' "$USAGE_TOP" \
      "$(printf '%s ' "${USAGE_RATIOS[@]}" | sed 's/ $//; s/ /, ×/g')" "$median" "$(awk -v m="$median" 'BEGIN { print 100 * (m - 1) }')"
  fi
  if wants drover && wants drover-auth; then
    echo
    echo "Auth cost (drover-auth, auth on with $AUTH_KEYS keys, vs proxy-only drover; p50 difference, req/s ratio):"
    echo
    compare drover-auth drover
  fi
  if wants drover && wants drover-limits; then
    echo
    echo "Limits cost (drover-limits: auth, rate_limit and spend_cap on, $LIMIT_KEYS keys, each key and their tenant with"
    echo "rpm and tpm 10^12, concurrency 100,000 and a total cap of 1M USD, so nothing is refused but every request takes"
    echo "from all of them; vs proxy-only drover; p50 difference, req/s ratio; target: req/s ×0.90 or more, p50 at c=1"
    echo "+20 µs or less):"
    echo
    compare drover-limits drover
  fi
  if wants drover-auth && wants drover-limits; then
    echo
    echo "Limits beyond auth (drover-limits, $LIMIT_KEYS keys, vs drover-auth, $AUTH_KEYS keys; p50 difference, req/s ratio):"
    echo
    compare drover-limits drover-auth
  fi
  if wants drover-limits; then
    echo
    echo "Lease traffic (drover-limits: lease stream messages its data plane sent to the control plane during each"
    echo "measured run, \`drover_lease_messages_total\`):"
    echo
    if ((${#LEASE_LINES[@]})); then printf '%s\n' "${LEASE_LINES[@]}"; else echo "- n/a (every run failed)"; fi
    echo
    printf 'Refused or let through without a lease across all drover-limits runs and warm-ups (must be 0): rate limited %d, spend cap %d, fail-open %d.\n' \
      "${LIMITS_TOTALS[@]}"
  fi
  if ((${#CHURN_LINES[@]})); then
    echo
    echo "Key churn (drover-auth, non-stream; each round a run without changes, then one while drover-keys-bench"
    echo "creates and revokes keys at $CHURN_RATE changes per second):"
    echo
    printf '%s\n' "${CHURN_LINES[@]}"
  fi
  if [[ -n $KEYS_REPORT ]]; then
    echo
    echo "Key delivery (\`drover-keys-bench --keys $AUTH_KEYS\`):"
    echo
    sed '1,/^$/d' <<<"$KEYS_REPORT"
  fi
  if [[ -n $AUDIT_REPORT ]]; then
    echo
    echo "Admin API and audit log (\`drover-keys-bench audit --records $AUDIT_RECORDS\`):"
    echo
    sed '1,/^$/d' <<<"$AUDIT_REPORT"
  fi
  if ((${#SPLIT_LINES[@]})); then
    echo
    echo "Split deployment (drover-controlplane, and two drover-dataplane processes with usage reporting on and off;"
    echo "non-stream, c=$USAGE_TOP, alternating; CPU time of each process per request of the run):"
    echo
    printf '%s\n' "${SPLIT_LINES[@]}"
  fi
  if [[ -n ${GW_PID:-} ]]; then
    peak_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
    echo
    printf 'Drover (`drover serve`): peak RSS %.1f MiB (VmHWM), %.1f MiB idle before the runs.\n' \
      "$(awk -v kb="$peak_kb" 'BEGIN {print kb / 1024}')" "$(awk -v kb="$IDLE_RSS_KB" 'BEGIN {print kb / 1024}')"
  fi
} >"$TMP/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$TMP/report.md" "$OUT"
log "written to ${OUT#"$ROOT"/}"
if [[ ${BENCH_README:-0} == 1 ]] && ((${#LIMITS_REFUSED[@]})); then
  log "README.md not changed: drover-limits requests were refused or failed open"
elif [[ ${BENCH_README:-0} == 1 ]]; then
  replace_region "$ROOT/README.md" bench-report "$TMP/report.md"
  log "README.md: benchmark report replaced"
fi
cat "$OUT"
((${#LIMITS_REFUSED[@]} == 0)) ||
  die "drover-limits: requests were refused or let through without a lease, so its rows do not measure the lease path: $(
    IFS=';'
    echo "${LIMITS_REFUSED[*]}"
  )"
