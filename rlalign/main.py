"""Command-line entry point: config file -> typed config -> run.

  python -m rlalign.main --config=configs/grpo_addition.py --workdir=/tmp/run
  python -m rlalign.main --config=configs/grpo_addition.py:smoke --workdir=/tmp/run \
      --config.phases.rl.group_size=4

Running again with the same workdir resumes from its latest checkpoint. SIGTERM or SIGINT
saves a checkpoint after the current step and exits with code 75 ("requeue me"); a run whose
updates keep coming out non-finite stops with exit code 1 and ``"status": "failed"`` in its
``summary.json``. ``--dry_run`` compiles
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
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the traceback of a user error (a bad key, file or checkpoint) "
    "instead of its one-line message.")
flags.mark_flags_as_required(["config", "workdir"])

USER_ERROR_EXIT_CODE = 2


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  try:
    config = _CONFIG.value
    if not config.data.data_dir:
      config.data.data_dir = os.path.join(os.path.abspath(_WORKDIR.value), "tfds")
  except OSError as e:  # get_config(arg) failed: ml_collections reports it as an OSError
    print(f"config error: {_one_line(e)}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)
  try:
    cfg = config_lib.from_config_dict(config)
  except (ValueError, KeyError) as e:
    # A config mistake is the user's to fix: say which key, without a traceback.
    print(f"config error: {e.args[0] if e.args else e}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)
  if _COMPILATION_CACHE.value:
    from rlalign import profiling
    profiling.enable_compilation_cache(_COMPILATION_CACHE.value)
  from rlalign.parallel import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _DRY_RUN.value:
    from rlalign import recipes
    from rlalign.rl import dry_run
    recipe = recipes.get(cfg.recipe.name)
    try:
      program = recipe.dry_run(cfg) if recipe.dry_run is not None else None
    except ValueError as e:
      print(f"dry run: {e}", file=sys.stderr)
      sys.exit(USER_ERROR_EXIT_CODE)
    if program is not None and _DRY_RUN_REWARD_MODEL.value:
      print(f"dry run: --dry_run_reward_model is for single-policy runs; recipe "
            f"{cfg.recipe.name!r} compiles its own roles", file=sys.stderr)
    sys.exit(dry_run.main(cfg, _WORKDIR.value, _DRY_RUN_REWARD_MODEL.value,
                          _DEVICE_MEMORY_GIB.value, program))
  from rlalign import recipes
  from rlalign.rl import phases, preemption, runtime
  try:
    with preemption.handle_signals():
      summary = recipes.run(cfg, _WORKDIR.value)
  except preemption.Preempted as e:
    print(f"preempted: {e} (exit {preemption.EXIT_CODE})", file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  except phases.NonFiniteError as e:
    runtime.write_failed_summary(_WORKDIR.value, str(e))
    print(f"diverged: {e}", file=sys.stderr)
    sys.exit(1)
  except (ValueError, FileNotFoundError) as e:
    # Checks of the config against the data, the checkpoints and the stored run raise these
    # before anything trains; the message names the key or file.
    if _VERBOSE.value:
      raise
    print(f"error: {e} (--verbose for the traceback)", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)
  if summary:  # process 0 only
    print(json.dumps(summary, indent=2))


def _one_line(error: BaseException) -> str:
  text = str(error.args[0] if len(error.args) == 1 else error)
  for _ in range(2):  # KeyError quotes its message, and AttributeError(KeyError) again
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
      text = text[1:-1].replace("\\'", "'").replace("\\n", " ")
  return " ".join(text.split())


def parse_flags(argv):
  """absl's flag parsing, with a bad flag, config file or override as one line and exit 2
  (not a traceback from inside ml_collections)."""
  argv = list(argv)
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--config" and i + 1 < len(argv):  # "--config VALUE" reads as "--config=VALUE"
      argv[i], argv[i + 1] = f"--config={argv[i + 1]}", ""
      arg = argv[i]
    if arg.startswith("--config="):
      path, colon, config_arg = arg[len("--config="):].partition(":")
      path = config_lib.resolve_config_path(path)  # a shipped config may be named bare
      # A missing file would be reported later, after a traceback: check first.
      if not os.path.isfile(path):
        print(f"config error: --config: no such file {path!r} (nor a shipped config: "
              f"{', '.join(config_lib.shipped_configs())})", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
      argv[i] = f"--config={path}{colon}{config_arg}"
  argv = [a for i, a in enumerate(argv) if a or i == 0]
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"flag error: {_one_line(e)}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    # ml_collections applies --config.a.b=v overrides while parsing; name the override.
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    key = _one_line(e).split(" ")[0].strip("'\"")
    culprit = next((a for a in overrides if key in a[9:].split(".")), None)
    print(f"config error: unknown key {culprit or key!r}: {_one_line(e)}", file=sys.stderr)
  except (TypeError, ValueError, OSError) as e:
    # OSError: ml_collections' wrapper of whatever get_config(arg) raised.
    print(f"config error: {_one_line(e)}", file=sys.stderr)
  sys.exit(USER_ERROR_EXIT_CODE)


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
