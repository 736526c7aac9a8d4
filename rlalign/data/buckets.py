"""Prompt length buckets: few distinct shapes, so few compilations, and short prompts that do
not pay for the longest.

Batches arrive left-padded to ``data.max_prompt_len``. :func:`trim_prompts` cuts the leading
pad columns down to the smallest bucket that holds the batch's longest prompt. Left padding
keeps every real token in place relative to the end, so the trimmed batch samples and trains
exactly like the padded one; the RL step compiles once per bucket it sees.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

PROMPT_KEYS = ("prompt_tokens", "prompt_mask")


def validate(buckets: Sequence[int], max_len: int, key: str = "data.prompt_buckets") -> None:
  if not buckets:
    return
  if any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise ValueError(f"{key} must be strictly increasing positive lengths, got {tuple(buckets)}")
  if buckets[-1] > max_len:
    raise ValueError(f"{key}: the largest bucket ({buckets[-1]}) exceeds data.max_prompt_len "
                     f"({max_len})")


def bucket_for(length: int, buckets: Sequence[int], max_len: int) -> int:
  """The smallest bucket >= ``length``; ``max_len`` when no bucket is that long."""
  for b in buckets:
    if length <= b:
      return b
  return max_len


def longest_prompt(batch: Mapping[str, np.ndarray]) -> int:
  mask = np.asarray(batch["prompt_mask"])
  return int(mask.sum(axis=1).max()) if mask.size else 0


def trim_prompts(batch: Mapping[str, np.ndarray], buckets: Tuple[int, ...],
                 longest: Optional[int] = None) -> Mapping[str, np.ndarray]:
  """``batch`` with its left-padded prompt columns cut to the batch's bucket.

  ``longest`` overrides the batch's own longest prompt; a multi-host run passes the maximum
  over hosts, so that every host cuts its rows of the global batch to the same width.
  """
  if not buckets:
    return batch
  mask = np.asarray(batch["prompt_mask"])
  width = mask.shape[1]
  longest = longest_prompt(batch) if longest is None else longest
  keep = bucket_for(longest, buckets, width)
  if keep >= width:
    return batch
  if mask[:, :width - keep].any():
    raise ValueError("prompt_mask has real tokens in the left padding: prompts must be "
                     "left-padded for bucketing")
  return {k: (np.asarray(v)[:, width - keep:] if k in PROMPT_KEYS else v)
          for k, v in batch.items()}
