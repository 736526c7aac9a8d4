"""A run read back: its experiment config, any role's weights, or a Hugging Face directory.

The commands that come after training (``python -m rlalign.eval``, ``rlalign.sample`` and
``rlalign.export``) all start here:

  cfg, where = load_experiment(run="/tmp/run")                  # <run>/config.json
  cfg, where = load_experiment(config="configs/grpo_hf.py:...")  # or a config file
  checkpoint = PhaseCheckpoint.open("/tmp/run", phase=None, step=None)  # newest phase, step
  params = checkpoint.role_params(cfg, "reward_model", plan_for(cfg, "reward_model"))
  model, params = hf_params(cfg, "policy", "/tmp/run/hf")

A LoRA-trained role comes back merged onto its base, and a frozen role as the checkpoint
keeps it. Every problem with the input is a :class:`RunInputError`: one line, naming the
file, flag or role at fault.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Optional, Sequence, Tuple

import jax

from rlalign import checkpoint as ckpt_lib
from rlalign import config as config_lib
from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm
from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rl.experiment import ExperimentConfig


class RunInputError(ValueError):
  """Bad input, named: a missing file or key, an unknown role or phase. One line."""


# ---- the experiment config ----------------------------------------------------------------


def load_config_file(spec: str):
  """``get_config(arg)`` of a config file ``path.py[:arg]``, as ml_collections reads it."""
  if ".py:" in spec:
    path, arg = spec.split(".py:", 1)
    path += ".py"
  else:  # a shipped config named bare, as python -m rlalign.main takes it: grpo_hf:ARG
    path, _, arg = spec.partition(":")
  path = config_lib.resolve_config_path(path)
  if not os.path.isfile(path):
    raise RunInputError(f"--config: no config file {path}")
  module_spec = importlib.util.spec_from_file_location("rlalign_loaded_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
    raise RunInputError(f"--config={spec}: {e}") from None


def load_experiment(run: str = "", config: str = "", data_dir_base: str = ""
                    ) -> Tuple[ExperimentConfig, str]:
  """The typed experiment config of ``run`` (its config.json) or of a ``config`` file, and
  where it came from. A config file's dataset is built under ``<run or data_dir_base>/tfds``
  when the file leaves ``data.data_dir`` empty."""
  if run and not os.path.isdir(run):
    raise RunInputError(f"--run: no run directory {run}")
  if config:
    value = load_config_file(config)
    if not value.data.data_dir:
      value.data.data_dir = os.path.join(os.path.abspath(run or data_dir_base or "."), "tfds")
    where = config
  elif run:
    where = os.path.join(run, "config.json")
    if not os.path.isfile(where):
      raise RunInputError(f"--run: {where} does not exist (not a workdir of python -m "
                          "rlalign.main?)")
    try:
      with open(where) as f:
        value = json.load(f)
    except (OSError, ValueError) as e:
      raise RunInputError(f"{where}: unreadable ({e})") from None
  else:
    raise RunInputError("give --run=WORKDIR or --config=FILE.py[:arg]")
  try:
    cfg = config_lib.from_config_dict(value)
  except (ValueError, KeyError) as e:
    raise RunInputError(f"{where}: {e.args[0] if e.args else e}") from None
  return cfg, where


def check_role(cfg: ExperimentConfig, role: str, where: str) -> None:
  if role not in cfg.role_configs:
    raise RunInputError(f"--role: unknown role {role!r}; {where} declares "
                        f"{sorted(cfg.role_configs)}")


# ---- the weights --------------------------------------------------------------------------


def plan_for(cfg: ExperimentConfig, role: Optional[str], one_device: bool = False
             ) -> ShardingPlan:
  """The run's mesh and the role's sharding rules (the mesh's, when the role has none); with
  ``one_device``, the same axes on the first device alone, which reads any checkpoint (Orbax
  reshards) on any machine."""
  rules = cfg.role_configs[role].rules if role in cfg.role_configs else None
  rules = cfg.mesh.rules if rules is None else rules
  if one_device:
    ones = (1,) * len(cfg.mesh.axes)
    single = dataclasses.replace(cfg.mesh, ici=ones, dcn=ones)
    return ShardingPlan(mesh_lib.make_mesh(single, jax.devices()[:1]), rules)
  return ShardingPlan(mesh_lib.make_mesh(cfg.mesh), rules)


def abstract_params(model: tfm.ModelConfig, plan: ShardingPlan):
  shardings = plan.params(tfm.logical_axes(model), tfm.abstract_params(model))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tfm.abstract_params(model), shardings)


def _adapter(cfg: ExperimentConfig, phase: str, role: str) -> Optional[lora_lib.LoRAConfig]:
  """The LoRA adapters the phase trains on the role, as the runtime decides them."""
  phase_cfg = cfg.phase_configs.get(phase)
  if phase_cfg is None:  # a recipe's own checkpoint (e.g. "alternating") of several phases
    phase_cfg = next((p for p in cfg.phase_configs.values() if role in p.trained_roles), None)
  if phase_cfg is None or role not in phase_cfg.trained_roles:
    return None
  if phase_cfg.adapter.lora_rank and role == phase_cfg.role("policy"):
    return phase_cfg.adapter.lora()
  if cfg.role_configs[role].adapter.lora_rank:
    return cfg.role_configs[role].adapter.lora()
  return None


def phases_newest_first(run: str) -> list:
  """The run's phase checkpoint directories with a finished step, the one written last
  first (a recipe's combined phase, e.g. "alternating", is a directory like any other)."""
  root = os.path.join(run, "checkpoints")
  found = []
  for phase in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    directory = os.path.join(root, phase)
    steps = _read_only(directory).all_steps() if os.path.isdir(directory) else []
    if steps:
      found.append((os.path.getmtime(os.path.join(directory, str(steps[-1]))), phase))
  return [phase for _, phase in sorted(found, reverse=True)]


def _read_only(directory: str) -> ckpt_lib.Checkpointer:
  """The run may still be saving there: read without cleaning up its save in progress."""
  return ckpt_lib.Checkpointer(directory, save_every=1, read_only=True)


@dataclasses.dataclass
class PhaseCheckpoint:
  """One step of a run's phase checkpoints, read-only."""
  directory: str
  phase: str
  step: int
  checkpointer: ckpt_lib.Checkpointer

  @classmethod
  def open(cls, run: str, phase: str, step: Optional[int]) -> "PhaseCheckpoint":
    """``step`` None: the phase's latest."""
    root = os.path.join(run, "checkpoints")
    have = sorted(os.listdir(root)) if os.path.isdir(root) else []
    directory = os.path.join(root, phase)
    if not os.path.isdir(directory):
      raise RunInputError(f"--phase: no checkpoint directory {directory}; the run's phases "
                          f"with checkpoints: {have}")
    checkpointer = _read_only(directory)
    steps = checkpointer.all_steps()
    if not steps:
      raise RunInputError(f"--phase={phase}: no finished checkpoint in {directory}")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise RunInputError(f"--step: no checkpoint for step {step} in {directory}; its steps: "
                          f"{steps}")
    return cls(directory, phase, step, checkpointer)

  @property
  def step_dir(self) -> str:
    return self.checkpointer.step_dir(self.step)

  def role_params(self, cfg: ExperimentConfig, role: str, plan: ShardingPlan):
    """The role's weights as the phase left them: trained params (merged onto their base
    when they are LoRA adapters), else the frozen copy the checkpoint keeps."""
    model = cfg.role_model(role)
    abstract = abstract_params(model, plan)
    restore = self.checkpointer.restore_subtree
    adapter = _adapter(cfg, self.phase, role)
    if adapter is not None:
      axes = tfm.logical_axes(model)
      lora_abstract = jax.eval_shape(
          lambda p, r: lora_lib.init_lora(p, adapter, r, axes), tfm.abstract_params(model),
          jax.random.key(0))
      lora_shardings = plan.params(lora_lib.lora_logical_axes(axes, adapter), lora_abstract)
      lora_abstract = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), lora_abstract,
          lora_shardings)
      try:
        adapters = restore(self.step, ("roles", role, "params"), lora_abstract)
        base = restore(self.step, ("frozen", role), abstract)
      except ValueError as e:
        raise RunInputError(str(e)) from None
      merge = jax.jit(lambda b, a: lora_lib.merge(b, a, adapter),
                      out_shardings=jax.tree.map(lambda x: x.sharding, abstract))
      return merge(base, adapters)
    try:
      return restore(self.step, ("roles", role, "params"), abstract)
    except ValueError as trained_error:
      if f"no roles/{role} " not in str(trained_error):
        raise RunInputError(str(trained_error)) from None
    try:
      return restore(self.step, ("frozen", role), abstract)
    except ValueError as e:
      if "no frozen" not in str(e):
        raise RunInputError(str(e)) from None
    raise RunInputError(f"checkpoint {self.step_dir} holds role {role!r} neither trained "
                        "(roles/<role>/params) nor frozen (frozen/<role>)")


def role_params(run: str, cfg: ExperimentConfig, role: str, plan: ShardingPlan,
                phase: Optional[str] = None, step: Optional[int] = None):
  """``(checkpoint, params)``: the role's weights in ``phase`` (at ``step``, else its latest)
  or, with ``phase`` None, in the newest phase checkpoint that holds the role."""
  if phase is not None:
    checkpoint = PhaseCheckpoint.open(run, phase, step)
    return checkpoint, checkpoint.role_params(cfg, role, plan)
  phases = phases_newest_first(run)
  if not phases:
    raise RunInputError(f"--run: no finished checkpoint under {os.path.join(run, 'checkpoints')}")
  for phase in phases:
    try:
      checkpoint = PhaseCheckpoint.open(run, phase, step)
      return checkpoint, checkpoint.role_params(cfg, role, plan)
    except RunInputError as e:
      if "neither trained" not in str(e) and "--step: no checkpoint" not in str(e):
        raise
  at = "" if step is None else f" at step {step}"
  raise RunInputError(f"no phase checkpoint of {run} holds role {role!r}{at} (phases with "
                      f"checkpoints: {phases})")


def hf_params(cfg: Optional[ExperimentConfig], role: str, hf_dir: str,
              heads: Sequence[str] = ("lm",), one_device: bool = False):
  """``(model, params)`` of a HF checkpoint: its architecture; the numerics (dtypes, remat)
  and the sharding rules of ``cfg``'s role when there is one."""
  from rlalign.models import hf  # safetensors and the family tables only when needed
  if not os.path.isfile(os.path.join(hf_dir, "config.json")):
    raise RunInputError(f"--hf_dir: {os.path.join(hf_dir, 'config.json')} does not exist")
  try:
    model = hf.model_config_from_dir(hf_dir, heads=heads)
  except (ValueError, KeyError) as e:
    raise RunInputError(f"--hf_dir={hf_dir}: {e}") from None
  if cfg is not None and role in cfg.role_configs:
    own = cfg.role_model(role)
    model = dataclasses.replace(model, dtype=own.dtype, param_dtype=own.param_dtype,
                                remat=own.remat)
  shardings = None
  if cfg is not None:
    plan = plan_for(cfg, role, one_device)
    shardings = plan.params(tfm.logical_axes(model), tfm.abstract_params(model))
  try:
    _, params = hf.load_hf_checkpoint(hf_dir, dtype=model.param_dtype, shardings=shardings,
                                      heads=heads)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise RunInputError(f"--hf_dir={hf_dir}: {e}") from None
  return model, params
