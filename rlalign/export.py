"""``python -m rlalign.export``: any role a run checkpointed, as a Hugging Face checkpoint.

  python -m rlalign.export --run=/tmp/rlalign_cotrain --role=generator --out=/tmp/generator_hf
  python -m rlalign.export --run=/tmp/rlalign_cotrain --role=verifier --phase=verify \\
      --step=300 --out=/tmp/verifier_hf --drop_score_bias

The weights are the role's in a phase checkpoint of the run (the newest one that holds the
role, or ``--phase``; its latest step, or ``--step``), a LoRA-trained role merged onto its base. A role
with an LM head becomes ``*ForCausalLM``; a reward model or verifier (a scalar head only)
becomes ``*ForSequenceClassification`` with one label. Both load with transformers'
``AutoModelFor...from_pretrained(out)``.

The family: a role that came from a Hugging Face checkpoint (``weights.source="hf"``, also
through ``source="role"``) keeps that checkpoint's config.json as the template (token ids,
context length, its family); any other role is written as ``--family`` (default llama, which
expresses the native backbone). The tokenizer goes along: the files of ``data.tokenizer_dir``,
or the run's character tokenizer written as ``tokenizer.json``.

HF's score layer has no bias. A scalar head whose bias is not zero (a verifier trained with
binary cross-entropy; a Bradley–Terry reward model's bias never moves from 0) exports only
with ``--drop_score_bias``: transformers' scores then leave that constant out (rlalign's score
minus b), and the bias is kept in config.json as ``rlalign_score_bias``, which rlalign's own
loader adds back.

Writes ``--out`` whole or not at all (a temporary directory renamed into place), and never
replaces one that exists without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from rlalign import workdir
from rlalign.data import tokenizer as tok_lib
from rlalign.rl.experiment import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class ExportSettings:
  """What to export and where (the command's flags)."""
  run: str = ""
  role: str = "policy"
  out: str = ""
  phase: Optional[str] = None   # None: the newest phase checkpoint holding the role
  step: Optional[int] = None    # None: the phase's latest checkpoint
  family: str = "llama"         # for roles not loaded from a HF checkpoint
  head: Optional[str] = None    # "lm" or "scalar"; None: "lm" when the role has one
  drop_score_bias: bool = False
  overwrite: bool = False

  def validate(self) -> None:
    if not self.run:
      raise workdir.RunInputError("give --run=WORKDIR (a run of python -m rlalign.main)")
    if not self.out:
      raise workdir.RunInputError("give --out=DIR for the Hugging Face checkpoint")
    if self.step is not None and self.step < 0:
      raise workdir.RunInputError(f"--step must be >= 0, got {self.step}")
    if self.head not in (None, "lm", "scalar"):
      raise workdir.RunInputError(f"--head must be 'lm' or 'scalar', got {self.head!r}")
    if os.path.exists(self.out) and not self.overwrite:
      raise workdir.RunInputError(f"--out: {self.out} exists; pass --overwrite to replace it")


def hf_template(cfg: ExperimentConfig, role: str) -> Optional[str]:
  """The HF checkpoint directory the role's weights came from, if any (following copies)."""
  seen = set()
  while role in cfg.role_configs and role not in seen:
    seen.add(role)
    weights = cfg.role_configs[role].weights
    if weights.source == "hf":
      return weights.path if os.path.isfile(os.path.join(weights.path, "config.json")) else None
    if weights.source != "role":
      return None
    role = weights.role
  return None


def export(settings: ExportSettings) -> Dict[str, Any]:
  """Writes the role to ``settings.out``; returns what was written and where it came from.
  Raises :class:`workdir.RunInputError` (or another ValueError naming its input)."""
  from rlalign.models import hf  # safetensors and the family tables only when needed
  settings.validate()
  cfg, where = workdir.load_experiment(run=settings.run)
  workdir.check_role(cfg, settings.role, where)
  model = cfg.role_model(settings.role)
  head = settings.head or ("lm" if "lm" in model.heads else "scalar")
  if head not in model.heads:
    raise workdir.RunInputError(f"--head={head}: role {settings.role!r} has heads "
                                f"{model.heads}")
  if head == "scalar" and model.scalar_heads != 1:
    raise workdir.RunInputError(
        f"role {settings.role!r} has {model.scalar_heads} scalar heads (an ensemble); "
        "*ForSequenceClassification exports take one")
  template = hf_template(cfg, settings.role)
  if template is None and settings.family not in hf.FAMILIES:
    raise workdir.RunInputError(f"--family: unsupported family {settings.family!r}; "
                                f"supported: {sorted(hf.FAMILIES)}")
  plan = workdir.plan_for(cfg, settings.role, one_device=True)
  checkpoint, params = workdir.role_params(settings.run, cfg, settings.role, plan,
                                           settings.phase, settings.step)
  params = jax.device_get(params)
  out = os.path.abspath(settings.out)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tokenizer_dir = cfg.data.tokenizer_dir or template
  if template is None:  # the token ids transformers pads, starts and stops with
    tokenizer = tok_lib.tokenizer_for(cfg.data)
    template = {"pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id,
                "eos_token_id": tokenizer.eos_id}
  staged = None
  try:
    if tokenizer_dir is None:
      staged = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
      tok_lib.save_hf_tokenizer(tok_lib.tokenizer_for(cfg.data), staged)
      tokenizer_dir = staged
    try:
      hf.save_hf_checkpoint(
          params, model, out, family=None if isinstance(template, str) else settings.family,
          hf_config_template=template, head=head, tokenizer_dir=tokenizer_dir,
          overwrite=settings.overwrite, drop_score_bias=settings.drop_score_bias)
    except hf.HFConfigError as e:
      family = hf.read_hf_config(template)["model_type"] if isinstance(template, str) else (
          settings.family)
      raise workdir.RunInputError(f"role {settings.role!r} as {family}: {e}") from None
    except ValueError as e:
      raise workdir.RunInputError(f"role {settings.role!r}: {e}") from None
  finally:
    if staged is not None:
      shutil.rmtree(staged, ignore_errors=True)
  bias = np.asarray(params["scalar_head"]["b"]) if head == "scalar" else np.zeros(())
  family = hf.read_hf_config(out)["model_type"]
  return {"out": out, "role": settings.role, "phase": checkpoint.phase,
          "step": checkpoint.step, "checkpoint": checkpoint.step_dir, "head": head,
          "family": family, "architecture": hf.read_hf_config(out)["architectures"][0],
          "dropped_score_bias": bias.tolist() if np.any(bias != 0) else None}


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlalign.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", default="", help="a run's workdir")
  parser.add_argument("--role", default="policy")
  parser.add_argument("--out", default="", help="the Hugging Face checkpoint directory to write")
  parser.add_argument("--phase", default=None, help="default: the newest phase checkpoint holding the role")
  parser.add_argument("--step", type=int, default=None, help="default: the phase's latest")
  parser.add_argument("--family", default="llama",
                      help="for roles not loaded from a HF checkpoint (default llama)")
  parser.add_argument("--head", default=None, help="lm or scalar; default: lm if the role has it")
  parser.add_argument("--drop_score_bias", action="store_true",
                      help="export a nonzero scalar-head bias by leaving it out of HF's score "
                      "layer (kept in config.json)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  settings = ExportSettings(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(ExportSettings)})
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every file, and read-only mode
  try:
    result = export(settings)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print("error: " + "; ".join(str(e).splitlines()), file=sys.stderr)
    return 2
  print(f"exported role {result['role']!r} ({result['phase']} step {result['step']}) as "
        f"{result['architecture']} to {result['out']}")
  if result["dropped_score_bias"] is not None:
    print(f"note: the score bias {result['dropped_score_bias']} is not in HF's score layer "
          "(transformers' scores are rlalign's minus it); config.json keeps it as "
          "rlalign_score_bias")
  return 0


if __name__ == "__main__":
  sys.exit(main())
