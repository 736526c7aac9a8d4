"""Supervised fine-tuning: token-level cross-entropy on demonstration tokens.

Used for warm starts and rejection-sampling fine-tuning. Advantages and the reference are
ignored; every masked token weighs the same.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  def validate(self, prefix: str = "objective") -> None:
    del prefix


def sft_loss(hp: SFTConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  del hp
  policy = outputs["policy"]
  mask = batch["mask"]
  nll = base.aggregate(-policy.logprobs, mask, "token")
  return nll, {"nll": nll, "entropy": base.aggregate(policy.entropy, mask, "token")}


OBJECTIVE = base.register(base.Objective(name="sft", hparams=SFTConfig, loss_fn=sft_loss,
                                          batch="demonstrations"))
