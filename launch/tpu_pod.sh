#!/usr/bin/env bash
# Runs one experiment on every worker of a Cloud TPU VM pod slice (e.g. a v5p-64: 8 workers).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG[:ARG] WORKDIR [--config.key=value ... | --dry_run ...]
#
# 1. copies this checkout (tracked and untracked, non-ignored files) to ~/rlalign on every worker;
# 2. installs it there with pip, plus jax[tpu] at the version setup.cfg pins;
# 3. starts the same `python3 -m rlalign.main` on all workers at once. jax.distributed finds
#    the other workers itself on TPU VMs (rlalign/parallel/distributed.py), so no flags name
#    a coordinator.
#
# WORKDIR must be one directory that every worker sees at the same path (a Filestore/NFS
# or gcsfuse mount): process 0 builds the dataset under it and all processes read it back,
# and checkpoints are written there. Paths in the config (JSONL files, tokenizer) must exist
# on every worker too. A gs:// URL is not a WORKDIR: the trainer writes with local file calls.
#
# Environment: TPU_PROJECT (gcloud --project; default: gcloud's), RLALIGN_SKIP_SETUP=1 (reuse
# the previous copy and install), PYTHON (default python3 on the workers).
# ssh --worker=all streams every worker's output here and returns when all have exited; run
# this inside tmux or screen, since a dropped connection ends the remote processes.
# Untested on a real pod from this repository's CI (no TPU there); check with --dry_run first.
set -euo pipefail
usage="usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG[:ARG] WORKDIR [--config.key=value ...]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
jax_version=$(sed -n 's/^ *jax==\([0-9.]*\) *$/\1/p' "$repo/setup.cfg")

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone" ${TPU_PROJECT:+--project "$TPU_PROJECT"})
on_all() { "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command "$1"; }

if [[ "${RLALIGN_SKIP_SETUP:-0}" != 1 ]]; then
  tarball=$(mktemp -t rlalign.XXXXXX.tar.gz)
  trap 'rm -f "$tarball"' EXIT
  # The working tree as it is, uncommitted edits included, without ignored build output.
  git -C "$repo" ls-files -z --cached --others --exclude-standard \
      | tar -czf "$tarball" -C "$repo" --ignore-failed-read --null -T -
  "${gcloud_tpu[@]}" scp "$tarball" "$tpu:rlalign.tar.gz" "${where[@]}" --worker=all
  on_all "set -e; rm -rf ~/rlalign && mkdir -p ~/rlalign && tar -xzf ~/rlalign.tar.gz -C ~/rlalign \
    && cd ~/rlalign && $python -m pip install -q -e . 'jax[tpu]==$jax_version' \
    -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
fi

# Quote the run's arguments once for the remote shell.
args=$(printf '%q ' --config="$config" --workdir="$workdir" "$@")
on_all "cd ~/rlalign && $python -m rlalign.main $args"
