# Shared by the benchmark scripts (sourced, not run). Before sourcing, set LOG_TAG (the prefix of log lines)
# and TMP_NAME (the name of the scratch directory); afterwards $TMP exists, and every process whose pid is
# appended to PIDS is stopped, and $TMP removed, on any exit.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# ---- processes we start, stopped on any exit --------------------------------------------------------------
TMP=$(mktemp -d -t "$TMP_NAME.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port found"
}

# Polls until `curl ARGS...` answers with HTTP 200, or fails after $1 seconds. Stops early if process $2 died.
wait_200() {
  local timeout=$1 pid=$2
  shift 2
  local deadline=$((SECONDS + timeout)) code
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.2
  done
  return 1
}

# replace_region FILE NAME REPORT: replaces the lines between `<!-- NAME:start -->` and `<!-- NAME:end -->` in
# FILE with the contents of REPORT, through a temporary file renamed into place, so that nothing else (a log line,
# a second run) can land in the middle of it. Fails, changing nothing, unless both markers are there once each.
replace_region() {
  local file=$1 name=$2 report=$3
  local starts ends
  starts=$(grep -c -- "^<!-- $name:start -->\$" "$file" || true)
  ends=$(grep -c -- "^<!-- $name:end -->\$" "$file" || true)
  [[ $starts == 1 && $ends == 1 ]] || die "$file needs one <!-- $name:start --> and one <!-- $name:end --> line"
  awk -v start="<!-- $name:start -->" -v end="<!-- $name:end -->" -v report="$report" '
    $0 == start { print; while ((getline line < report) > 0) print line; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }
  ' "$file" >"$file.tmp.$$"
  mv "$file.tmp.$$" "$file"
}
