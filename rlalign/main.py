"""Command-line entry point: config file -> typed config -> run.

  python -m rlalign.main --config=configs/grpo_addition.py --workdir=/tmp/run
  python -m rlalign.main --config=configs/grpo_addition.py:smoke --workdir=/tmp/run \
      --config.phases.rl.group_size=4

Running again with the same workdir resumes from its latest checkpoint. ``--dry_run`` compiles
the RL step and the sampler for the config's mesh from abstract inputs, prints per-device
memory and exits, training nothing (``rlalign/rl/dry_run.py``).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rlalign import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs outside "
    "Cloud TPU and SLURM (which are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Lower and compile the RL step and the sampler for the config's mesh on "
    "the devices present, print per-device memory and exit; allocates no params, reads no data.")
_DRY_RUN_REWARD_MODEL = flags.DEFINE_bool(
    "dry_run_reward_model", False, "With --dry_run: also count a reward model of the policy's "
    "shape.")
_DEVICE_MEMORY_GIB = flags.DEFINE_float(
    "device_memory_gib", None, "With --dry_run: memory per device in GiB; exit 1 if the "
    "estimated peak exceeds it.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", os.environ.get("RLALIGN_COMPILATION_CACHE", ""),
    "Directory for JAX's persistent compilation cache (default: $RLALIGN_COMPILATION_CACHE; "
    "empty: off). A relaunch of the same config then starts without compiling.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  config = _CONFIG.value
  if not config.data.data_dir:
    config.data.data_dir = os.path.join(os.path.abspath(_WORKDIR.value), "tfds")
  try:
    cfg = config_lib.from_config_dict(config)
  except (ValueError, KeyError) as e:
    # A config mistake is the user's to fix: say which key, without a traceback.
    print(f"config error: {e.args[0] if e.args else e}", file=sys.stderr)
    sys.exit(2)
  if _COMPILATION_CACHE.value:
    from rlalign import profiling
    profiling.enable_compilation_cache(_COMPILATION_CACHE.value)
  from rlalign.parallel import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _DRY_RUN.value:
    from rlalign.rl import dry_run
    sys.exit(dry_run.main(cfg, _WORKDIR.value, _DRY_RUN_REWARD_MODEL.value,
                          _DEVICE_MEMORY_GIB.value))
  from rlalign import recipes
  summary = recipes.run(cfg, _WORKDIR.value)
  if summary:  # process 0 only
    print(json.dumps(summary, indent=2))


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
