"""Host rewards that misbehave on purpose, for tests/rewards/test_host_pool.py.

They register on import under names that no real reward uses. The pool's workers import this
module by name to find them, as they would a user's own reward module.
"""
from __future__ import annotations

import os
import time

import numpy as np

from rlalign.rewards import base


@base.host("host_pool_test_length")
def length(prompts, completions, answers):
  del prompts, answers
  return np.array([float(len(c)) for c in completions])


@base.host("host_pool_test_sleep_forever")
def sleep_forever(prompts, completions, answers):
  del prompts, completions, answers
  time.sleep(3600)


@base.host("host_pool_test_hang_on_word")
def hang_on_word(prompts, completions, answers):
  """Hangs on a chunk holding the completion "hang", else scores lengths."""
  if "hang" in completions:
    time.sleep(3600)
  return length(prompts, completions, answers)


@base.host("host_pool_test_raises")
def raises(prompts, completions, answers):
  del prompts, completions, answers
  raise ValueError("boom: the verifier broke")


@base.host("host_pool_test_nonfinite")
def nonfinite(prompts, completions, answers):
  """Lengths, but NaN for the completion "nan" and inf for "inf"."""
  special = {"nan": np.nan, "inf": np.inf}
  return np.array([special.get(c, float(len(c))) for c in completions])


@base.host("host_pool_test_wrong_shape")
def wrong_shape(prompts, completions, answers):
  del prompts, answers
  return np.zeros((len(completions) + 1,))


@base.host("host_pool_test_wrong_type")
def wrong_type(prompts, completions, answers):
  del prompts, answers
  return ["not a number"] * len(completions)


@base.host("host_pool_test_exits")
def exits(prompts, completions, answers):
  """Takes its process down, as a segfault or the OOM killer would."""
  del prompts, completions, answers
  os._exit(3)
