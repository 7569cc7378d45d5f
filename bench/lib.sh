# Shell helpers shared by the scripts in bench/ and examples/: background processes
# stopped in reverse order on exit, free loopback ports, and waits on a port or a log
# line. Source it, then append each background process's PID to `pids`:
#
#   source "$(dirname "$0")/../bench/lib.sh"
#   some-server & pids+=($!)
#
# A work directory made with `work_dir` is removed on exit (kept when BENCH_KEEP is set).

pids=()
work="${work:-}"
remove_work=""

# Stops every process in `pids`, the last started first (each gatehouse drains its calls
# before the app behind it goes), then removes the work directory.
stop_all() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "$remove_work" ] && [ -n "$work" ]; then
    if [ -n "${BENCH_KEEP:-}" ]; then
      echo "work files kept in $work" >&2
    else
      rm -rf "$work"
    fi
  fi
}
trap stop_all EXIT

# work_dir: sets `work` to a fresh temporary directory, removed on exit.
work_dir() {
  work="$(mktemp -d)"
  remove_work=1
}

# free_port: a loopback port the kernel has just handed out and released.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# wait_port PORT [SECONDS]: until something accepts connections on PORT (default 10 s).
wait_port() {
  local tries=$(( ${2:-10} * 20 ))
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$(basename "$0"): nothing listening on $1" >&2
  return 1
}

# wait_for FILE PATTERN PID: until the process PID has printed a line matching the
# extended regular expression PATTERN into FILE (at most 30 s); fails at once if PID
# exits first.
wait_for() {
  for _ in $(seq 300); do
    grep -q -E "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || { cat "$1" >&2; echo "$(basename "$0"): process exited early" >&2; return 1; }
    sleep 0.1
  done
  cat "$1" >&2
  echo "$(basename "$0"): timed out waiting for: $2" >&2
  return 1
}
