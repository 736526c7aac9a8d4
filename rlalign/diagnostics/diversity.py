"""Diversity of sampled completions: in-graph distinct-n and host-side self-BLEU.

Both look within groups of rows, such as the G samples of one prompt, since diversity across
different prompts says nothing about mode collapse.
"""
from __future__ import annotations

import collections
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _windows(tokens: jax.Array, mask: jax.Array, n: int) -> Tuple[jax.Array, jax.Array]:
  """The B*(T-n+1) n-grams as [B, L, n] ids and [B, L] validity, L = T - n + 1."""
  length = tokens.shape[1] - n + 1
  idx = jnp.arange(length)[:, None] + jnp.arange(n)[None, :]
  return tokens[:, idx], jnp.all(mask[:, idx], axis=-1)


def distinct_n(tokens: jax.Array, mask: jax.Array, n: int, groups: int = 1) -> jax.Array:
  """Distinct n-grams over all n-grams, within each of ``groups`` row groups, averaged.

  ``tokens`` and ``mask`` are [B, T]; rows [g*B/groups, (g+1)*B/groups) form group g. An
  n-gram counts only if all n of its positions are in ``mask``. Each group's ratio is
  (distinct valid n-grams) / (valid n-grams); the result is the mean over the groups holding
  at least one n-gram, and 0 when none does.

  Distinctness is exact, with no hashing: each group's n-grams are sorted lexicographically on
  (invalid flag, id_1, ..., id_n) with one ``lax.sort`` over n + 1 int32 keys, and an n-gram
  is new where any key differs from its predecessor's. The invalid flag sorts masked windows
  after the valid ones, so they never split a run of equal valid n-grams. Cost: with
  N = (B / groups) * (T - n + 1) windows per group, O(groups * N log N) comparisons of up to
  n + 1 keys each, and O(B T n) memory. Static shapes throughout; ``n`` and ``groups`` are
  static under jit.
  """
  batch, length = tokens.shape
  if batch % groups:
    raise ValueError(f"{batch} rows do not split into {groups} groups")
  if length < n:
    return jnp.zeros((), jnp.float32)
  grams, valid = _windows(tokens.astype(jnp.int32), mask.astype(bool), n)
  grams = grams.reshape(groups, -1, n)
  valid = valid.reshape(groups, -1)
  keys = (jnp.logical_not(valid).astype(jnp.int32),) + tuple(grams[..., i] for i in range(n))
  keys = jax.lax.sort(keys, dimension=1, num_keys=len(keys))
  changed = jnp.zeros(keys[0][:, 1:].shape, bool)
  for key in keys:
    changed = changed | (key[:, 1:] != key[:, :-1])
  first = jnp.concatenate([jnp.ones((groups, 1), bool), changed], axis=1)
  sorted_valid = keys[0] == 0
  distinct = jnp.sum(first & sorted_valid, axis=1).astype(jnp.float32)
  count = jnp.sum(valid, axis=1).astype(jnp.float32)
  has = count > 0
  ratio = jnp.where(has, distinct / jnp.maximum(count, 1.0), 0.0)
  return jnp.sum(ratio) / jnp.maximum(jnp.sum(has), 1).astype(jnp.float32)


def _ngram_counts(seq: Sequence[int], n: int) -> collections.Counter[Tuple[int, ...]]:
  return collections.Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def _sentence_bleu(hyp: Sequence[int], refs: Sequence[Sequence[int]], max_n: int) -> float:
  """BLEU of ``hyp`` against ``refs``: uniform weights, brevity penalty, BLEU+1 smoothing."""
  if not hyp:
    return 0.0
  log_precision = 0.0
  for n in range(1, max_n + 1):
    hyp_counts = _ngram_counts(hyp, n)
    most_in_a_ref: collections.Counter[Tuple[int, ...]] = collections.Counter()
    for ref in refs:
      most_in_a_ref |= _ngram_counts(ref, n)  # Counter "|" keeps the larger count.
    matches = sum(min(c, most_in_a_ref[g]) for g, c in hyp_counts.items())
    total = sum(hyp_counts.values())
    if n == 1:
      if matches == 0:
        return 0.0
      precision = matches / total
    else:
      precision = (matches + 1) / (total + 1)
    log_precision += math.log(precision) / max_n
  hyp_len = len(hyp)
  # Closest reference length, the shorter on a tie.
  ref_len = min((len(r) for r in refs), key=lambda r: (abs(r - hyp_len), r))
  brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
  return brevity * math.exp(log_precision)


def self_bleu(sequences: Sequence[Sequence[int]], max_n: int = 4) -> float:
  """Mean over sequences of each one's BLEU with all the others as references.

  Per hypothesis: modified (clipped) n-gram precisions p_1..p_max_n, where a hypothesis
  n-gram's count is clipped to its largest count in any single reference; uniform weights
  1/max_n on log p_n; brevity penalty exp(1 - r/c) when the hypothesis length c is at most r,
  the closest reference length (the shorter on a tie), else 1. Smoothing is BLEU+1
  (Lin & Och 2004): p_n = (matches + 1) / (n-grams + 1) for n > 1, p_1 unsmoothed, so a
  hypothesis sharing no token with any reference scores 0 and one too short for an order
  gets p_n = 1 there. An empty hypothesis scores 0. Host-side Python, O(S^2 T max_n) for S
  sequences of length T. 1 means every sample repeats the others; near 0, nothing shared.
  """
  seqs = [list(map(int, s)) for s in sequences]
  if len(seqs) < 2:
    raise ValueError(f"self-BLEU needs at least 2 sequences, got {len(seqs)}")
  scores = [_sentence_bleu(h, seqs[:i] + seqs[i + 1:], max_n) for i, h in enumerate(seqs)]
  return float(np.mean(scores))


def self_bleu_groups(tokens, mask, group_size: int, max_n: int = 4) -> float:
  """``self_bleu`` within each group of ``group_size`` consecutive rows, averaged over groups.

  ``tokens`` and ``mask`` are [B, T] (numpy or jax); a row's sequence is its tokens at the
  masked positions, in order.
  """
  tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
  if group_size < 2 or tokens.shape[0] % group_size:
    raise ValueError(f"{tokens.shape[0]} rows do not split into groups of {group_size} >= 2")
  seqs = [row[m].tolist() for row, m in zip(tokens, mask)]
  groups = [seqs[i:i + group_size] for i in range(0, len(seqs), group_size)]
  return float(np.mean([self_bleu(g, max_n) for g in groups]))
