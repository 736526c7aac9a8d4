#!/usr/bin/env bash
# Runs one experiment as N processes on this machine, joined by jax.distributed (CPU: gloo).
#   launch/local_multiprocess.sh 2 configs/grpo_addition.py /tmp/rlalign_mp [--config.k=v ...]
# Each process drives its own local devices and reads only its rows of every batch. If one
# process fails, the others are stopped rather than left waiting in a collective.
set -euo pipefail
n=${1:?usage: launch/local_multiprocess.sh N CONFIG[:ARG] WORKDIR [--config.key=value ...]}
config=${2:?usage: launch/local_multiprocess.sh N CONFIG[:ARG] WORKDIR [--config.key=value ...]}
workdir=${3:?usage: launch/local_multiprocess.sh N CONFIG[:ARG] WORKDIR [--config.key=value ...]}
shift 3
port=${RLALIGN_COORDINATOR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for ((i = 0; i < n; i++)); do
  python3 -m rlalign.main --config="$config" --workdir="$workdir" \
      --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
for ((i = 0; i < n; i++)); do
  if ! wait -n; then
    echo "launch/local_multiprocess.sh: a process failed; stopping the others" >&2
    exit 1
  fi
done
trap - EXIT
