# Process helpers of the example scripts (sourced, not run): stop what a script started, by pid, with everything
# below it, and wait until it is gone.

kill_tree() {  # a process and everything below it; one started in its own session (setsid: flower-superexec and
  local pid=$1 child  # the apps it starts) goes with its whole process group
  for child in $(pgrep -P "$pid" 2>/dev/null); do kill_tree "$child"; done
  kill -9 -- "-$pid" 2>/dev/null || true
  kill -9 "$pid" 2>/dev/null || true
}

alive() {  # any of these pids still running (a zombie counts as gone)
  local pid state
  for pid in "$@"; do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || continue
    [ -n "$state" ] && [ "$state" != Z ] && return 0
  done
  return 1
}

stop_pids() {  # WHO PID...: kill each pid's tree, then wait up to 10 s until all are gone (SIGKILL is asynchronous)
  local who=$1 pid i
  shift
  for pid in "$@"; do kill_tree "$pid"; done
  for i in $(seq 100); do alive "$@" || return 0; sleep 0.1; done
  echo "$who: some processes are still exiting after 10 s: $*" >&2
}
