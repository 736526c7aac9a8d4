#!/usr/bin/env bash
# Runs one experiment on this machine.
#   launch/local.sh configs/grpo_addition.py /tmp/rlalign_addition [--config.phases.rl.group_size=4 ...]
# Running it again with the same workdir resumes from the latest checkpoint.
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG[:ARG] WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/local.sh CONFIG[:ARG] WORKDIR [--config.key=value ...]}
shift 2
exec python3 -m rlalign.main --config="$config" --workdir="$workdir" "$@"
