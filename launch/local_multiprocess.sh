#!/usr/bin/env bash
# Runs one experiment as N processes on this machine, joined by jax.distributed (CPU: gloo).
#   launch/local_multiprocess.sh 2 configs/grpo_addition.py /tmp/rlalign_mp [--config.k=v ...]
# Each process drives its own local devices and reads only its rows of every batch.
#
# PYTHON picks the interpreter (default: python3 on the PATH); pass your venv's, say
# PYTHON=.venv/bin/python, when it is not activated. Each process's stderr goes to the
# terminal and to WORKDIR/logs/process_<i>.stderr. If one process fails, the others are
# stopped rather than left waiting in a collective, and the failed one's last lines are
# shown. SIGTERM or SIGINT reaches every process: each saves the same step and exits 75,
# and so does this script, for a scheduler to requeue it.
set -euo pipefail
usage="usage: [PYTHON=python3] launch/local_multiprocess.sh N CONFIG[:ARG] WORKDIR [--config.key=value ...]"
n=${1:?$usage}
config=${2:?$usage}
workdir=${3:?$usage}
shift 3
python=${PYTHON:-python3}
port=${RLALIGN_COORDINATOR_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
logs="$workdir/logs"
mkdir -p "$logs"

pids=()
declare -A index_of
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
forward() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
trap forward TERM INT
for ((i = 0; i < n; i++)); do
  "$python" -m rlalign.main --config="$config" --workdir="$workdir" \
      --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@" \
      2> >(tee "$logs/process_$i.stderr" >&2) &
  pids+=($!)
  index_of[$!]=$i
done
preempted=0
remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  rc=0
  unset done_pid
  wait -n -p done_pid "${remaining[@]}" || rc=$?
  # A signal forwarded to the children interrupts wait before any of them ends: wait again.
  [[ -z "${done_pid:-}" ]] && continue
  left=()
  for pid in "${remaining[@]}"; do [[ $pid != "$done_pid" ]] && left+=("$pid"); done
  remaining=("${left[@]+"${left[@]}"}")
  if [[ $rc -eq 75 ]]; then
    preempted=$((preempted + 1))
  elif [[ $rc -ne 0 ]]; then
    failed=${index_of[$done_pid]}
    echo "launch/local_multiprocess.sh: process $failed exited with code $rc; stopping the" \
         "others. Its last lines ($logs/process_$failed.stderr):" >&2
    sleep 0.2  # let tee write the last lines
    tail -n 5 "$logs/process_$failed.stderr" | sed 's/^/  | /' >&2
    exit "$rc"
  fi
done
trap - EXIT
if [[ $preempted -gt 0 ]]; then
  echo "launch/local_multiprocess.sh: preempted with a checkpoint saved; run it again to resume" >&2
  exit 75
fi
