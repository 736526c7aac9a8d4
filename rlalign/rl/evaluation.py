"""Held-out evaluation: the mean score of greedy and sampled completions under the run's judges.

A judge is any in-graph reward (``rewards/``), named in ``train.eval_judges`` as
``{metric: reward}``; the default ``{"pass@1": "exact_match"}`` logs ``eval/pass@1_greedy`` and
``eval/pass@1_sampled``. Each phase that trains the policy also logs, per judge,
``eval/<metric>_win_rate_vs_start``: how often the policy's sampled completion is judged better
than the phase's starting policy's on the same held-out prompt (:func:`win_rate`). A judge
that reads a role (a learned or gold judge model) gets that
role's params as an argument, like a learned reward.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import transformer as tfm
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rewards import base as reward_base
from rlalign.rl.layout import jit_with_rules
from rlalign.sampling import sampler

Judges = Tuple[Tuple[str, reward_base.RewardTerm], ...]
DEFAULT_JUDGES: Judges = (("pass@1", reward_base.RewardTerm("exact_match")),)


def _score_batch(params, batch, rng, judge_params, *, model: tfm.ModelConfig,
                 sampling: sampler.SamplingConfig, judges: Judges,
                 judge_models: Mapping[str, tfm.ModelConfig], pad_id: int):
  out = sampler.sample(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model, sampling,
                       pad_id)
  stop = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
  rollouts = {**batch, "completion_tokens": out.tokens, "completion_mask": out.mask,
              "completion_stopped": jnp.any(jnp.isin(out.tokens, stop) & out.mask, axis=1)}
  views = {name: reward_base.RoleModel(judge_models[name], p) for name, p in judge_params.items()}
  return {metric: reward_base.score_in_graph((term,), rollouts, views)[term.key]
          for metric, term in judges}


def win_rate(candidate: np.ndarray, baseline: np.ndarray) -> float:
  """How often the candidate's completion beats the baseline's on the same prompt, ties
  counting half: mean(1[c > b] + 0.5 * 1[c == b]), 0.5 for two equal policies."""
  candidate, baseline = np.asarray(candidate), np.asarray(baseline)
  if candidate.shape != baseline.shape:
    raise ValueError(f"win rate over different prompts: {candidate.shape} vs {baseline.shape}")
  return float(np.mean((candidate > baseline) + 0.5 * (candidate == baseline)))


def verdict_summary(verdicts: np.ndarray, gold: np.ndarray) -> Dict[str, float]:
  """A verifier's verdicts (score > 0 passes) on held-out samples against a gold judge's
  (> 0.5 is right): its accuracy, balanced accuracy, false-positive rate (the wrong samples
  it passes, the reward a policy trained on it could hack), true-positive rate, the share of
  samples the gold judge finds right, and its AUROC: how often a right sample scores above a
  wrong one (ties half), which is what a group-relative advantage reads of a reward, whatever
  its threshold. A rate over an empty class (no wrong sample, say) is NaN, and so are the
  balanced accuracy and AUROC then."""
  scores = np.asarray(verdicts, np.float64)
  passed, right = scores > 0, np.asarray(gold) > 0.5
  nan = float("nan")
  rate = lambda hit, of: float(np.sum(hit & of) / np.sum(of)) if np.any(of) else nan
  tpr, tnr = rate(passed, right), rate(~passed, ~right)
  pos, neg = scores[right], scores[~right]
  auroc = (float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
           if pos.size and neg.size else nan)
  return {"accuracy": float(np.mean(passed == right)) if right.size else nan,
          "balanced_accuracy": 0.5 * (tpr + tnr), "false_positive_rate": 1.0 - tnr,
          "true_positive_rate": tpr, "gold_rate": float(np.mean(right)) if right.size else nan,
          "auroc": auroc}


def judge_roles(judges: Judges) -> Tuple[str, ...]:
  return tuple(dict.fromkeys(r for _, term in judges for r in term.roles))


def make_evaluator(model: tfm.ModelConfig, sampling: sampler.SamplingConfig,
                   judges: Judges = DEFAULT_JUDGES, pad_id: int = 0,
                   plan: Optional[ShardingPlan] = None,
                   judge_models: Optional[Mapping[str, tfm.ModelConfig]] = None,
                   modes: Tuple[str, ...] = ("greedy", "sampled")) -> Callable:
  """Returns ``evaluate(params, batches, rng, judge_params={}) -> {"eval/<metric>_greedy",
  "eval/<metric>_sampled"}``.

  ``batches`` are numpy dicts with a ``valid`` row mask (see data.pipeline.eval_batches),
  held in full by every process; with a plan they are split over the mesh's batch axes.
  ``judge_params`` maps each role a judge reads to its params; ``judge_models`` to its model.
  """
  for _, term in judges:
    if not term.reward.in_graph:
      raise ValueError(f"eval judge {term.name!r} is a host reward; judges run in-graph")
  judge_models = dict(judge_models or {})
  missing = set(judge_roles(judges)) - set(judge_models)
  if missing:
    raise ValueError(f"eval judges read roles {sorted(missing)}, which this run does not have")

  def scorer(settings):
    fn = functools.partial(_score_batch, model=model, sampling=settings, judges=judges,
                           judge_models=judge_models, pad_id=pad_id)
    kw = dict(out_shardings=plan.replicated) if plan is not None else {}
    return jit_with_rules(fn, plan, **kw)

  scorers = {"greedy": lambda: scorer(dataclasses.replace(sampling, temperature=0.0)),
             "sampled": lambda: scorer(sampling)}
  scorers = {mode: scorers[mode]() for mode in modes}

  def per_row(score, params, batches, rng, judge_params) -> Dict[str, np.ndarray]:
    rows = {metric: [] for metric, _ in judges}
    for i, batch in enumerate(batches):
      arrays = {k: v for k, v in batch.items() if k != "valid"}
      if plan is not None:
        arrays = plan.put_global_batch(arrays)
      scores = jax.device_get(score(params, arrays, jax.random.fold_in(rng, i), judge_params))
      valid = np.asarray(batch["valid"])
      for metric in rows:
        rows[metric].append(np.asarray(scores[metric], np.float64)[valid])
    return {metric: np.concatenate(parts) for metric, parts in rows.items()}

  def evaluate(params, batches: Sequence[Mapping[str, np.ndarray]], rng,
               judge_params: Optional[Mapping[str, Any]] = None,
               rows: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, float]:
    """The means; with ``rows``, also each held-out prompt's sampled score, as
    ``rows[metric]`` (for :func:`win_rate`)."""
    judge_params = dict(judge_params or {})
    out = {}
    for mode, score in scorers.items():
      scores = per_row(score, params, batches, rng, judge_params)
      for metric, values in scores.items():
        out[f"eval/{metric}_{mode}"] = float(values.mean()) if values.size else 0.0
        if mode == "sampled" and rows is not None:
          rows[metric] = values
    return out

  return evaluate
