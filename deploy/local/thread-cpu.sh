#!/usr/bin/env bash
# Where a benchmark's CPU goes, by process and thread, from /proc (no profiler needed): the
# method behind docs/benchmarks.md's "by thread" figures. Run beside `ponte-bench ... e2e`.
#
#   deploy/local/thread-cpu.sh sample [SECONDS] > threads.log
#       every SECONDS (default 10) one line per thread of every Ponte process and the local
#       broker: <unix time> <pid> <process> <tid> <thread name> <utime> <stime> (clock ticks),
#       and one per process with `-` for tid and `(process)` for thread name: the whole
#       process' CPU, which counts the threads that ended as well
#   deploy/local/thread-cpu.sh sum threads.log [FROM] [TO]
#       CPU seconds per process and per thread name (digits folded: tokio-rt-worker,
#       rdk:broker#) between the unix times FROM and TO (default: the whole log). A thread
#       that lives less than a sample's interval is seen in no two samples (the reconciler's
#       second apply lane is a thread of each epoch's): its CPU is the process' less its
#       threads', printed as "(threads that ended)".
#
# A process is named by its `ponte` subcommand (reconciler, education-adapter, ...) or, for
# the broker, kafka.Kafka; thread names are the kernel's, cut at 15 characters.
set -euo pipefail

sample() {
  local every="${1:-10}"
  while true; do
    local now
    now=$(date +%s)
    for p in $(pgrep -f 'ponte|kafka\.Kafka' || true); do
      [[ $p == "$$" ]] && continue
      local name
      name=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null |
        awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(reconciler|[a-z]+-adapter|kafka\.Kafka)$/) { print $i; exit }}') || continue
      [[ -n $name ]] || name=$(cat "/proc/$p/comm" 2>/dev/null) || continue
      local whole
      if whole=$(cat "/proc/$p/stat" 2>/dev/null); then
        # shellcheck disable=SC2086
        set -- ${whole##*) }
        echo "$now $p $name - (process) ${12} ${13}"
      fi
      for t in /proc/"$p"/task/*; do
        local stat
        stat=$(cat "$t/stat" 2>/dev/null) || continue
        # comm is in parentheses and may hold spaces; the fields after it are fixed.
        local comm="${stat#*(}"
        comm="${comm%)*}"
        local rest="${stat##*) }"
        # shellcheck disable=SC2086
        set -- $rest
        echo "$now $p $name ${t##*/} ${comm// /_} ${12} ${13}"
      done
    done
    sleep "$every"
  done
}

sum() {
  local log="$1" from="${2:-0}" to="${3:-99999999999}"
  local hz
  hz=$(getconf CLK_TCK)
  awk -v from="$from" -v to="$to" -v hz="$hz" '
    NF == 7 && $1 >= from && $1 <= to {
      key = $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
      if (!(key in first)) { first[key] = $6 + $7; t0 = (t0 == "" || $1 < t0) ? $1 : t0 }
      last[key] = $6 + $7; if ($1 > t1) t1 = $1
    }
    END {
      for (k in last) {
        split(k, f, SUBSEP); s = (last[k] - first[k]) / hz
        if (f[3] == "-") { whole[f[2]] += s; continue }
        thread = f[4]; gsub(/[0-9]+/, "#", thread)
        proc[f[2]] += s; byth[f[2] SUBSEP thread] += s
      }
      # What the process used beyond the threads seen twice; nothing in a log written before
      # the process lines were.
      for (p in whole) if (whole[p] > proc[p]) {
        byth[p SUBSEP "(threads that ended)"] = whole[p] - proc[p]; proc[p] = whole[p]
      }
      span = t1 - t0; if (span <= 0) span = 1
      printf "%d s sampled\n", span
      for (p in proc) {
        printf "%-20s %9.1f s  %5.1f %% of one core\n", p, proc[p], 100 * proc[p] / span
        for (k in byth) { split(k, f, SUBSEP); if (f[1] == p && byth[k] >= 0.05 * proc[p] && byth[k] > 0.5)
          printf "    %-24s %9.1f s\n", f[2], byth[k] }
      }
    }' "$log"
}

case "${1:-}" in
  sample) sample "${2:-10}" ;;
  sum) [[ $# -ge 2 ]] || { echo "usage: $0 sum LOG [FROM] [TO]" >&2; exit 2; }; sum "$2" "${3:-0}" "${4:-99999999999}" ;;
  *) echo "usage: $0 sample [SECONDS] | sum LOG [FROM] [TO]" >&2; exit 2 ;;
esac
