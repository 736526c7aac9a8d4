"""Diversity of sampled completions: distinct-n and self-BLEU, in-graph; self-BLEU also on
the host (the reference the in-graph one is tested against).

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


def self_bleu_in_graph(tokens: jax.Array, mask: jax.Array, groups: int,
                       max_n: int = 4) -> jax.Array:
  """``self_bleu_groups`` inside the program: the mean over ``groups`` row groups of each
  group's self-BLEU, with the same clipping, brevity penalty and BLEU+1 smoothing.

  ``mask`` must be a prefix of each row (a completion's tokens up to its stop), so a row's
  n-grams are its windows. Per order n, a group's G*L windows (L = T - n + 1) are sorted once
  as in ``distinct_n``; the runs of equal n-grams then give each n-gram's count in every
  row, [G*L, G], so a window's clipped match is min(its count in its own row, its largest
  count in another row) / its own count, summed over the row. Cost per group and order:
  one sort of G*L keys and O(G^2 L) memory, never the (G L)^2 of comparing every pair.
  """
  batch, length = tokens.shape
  if batch % groups:
    raise ValueError(f"{batch} rows do not split into {groups} groups")
  G = batch // groups
  if G < 2:
    raise ValueError(f"self-BLEU needs at least 2 rows a group, got {G}")
  tokens = tokens.astype(jnp.int32).reshape(groups, G, length)
  mask = mask.astype(bool).reshape(groups, G, length)
  return jnp.mean(jax.vmap(lambda t, m: _group_self_bleu(t, m, max_n))(tokens, mask))


def _group_matches(tokens: jax.Array, mask: jax.Array, n: int) -> jax.Array:
  """[G] clipped n-gram matches of each row against the group's other rows."""
  G, T = tokens.shape
  grams, valid = _windows(tokens, mask, n)  # [G, L, n], [G, L]
  L = grams.shape[1]
  rows = jnp.repeat(jnp.arange(G, dtype=jnp.int32), L)
  keys = (jnp.logical_not(valid).reshape(-1).astype(jnp.int32),) + tuple(
      grams[..., i].reshape(-1) for i in range(n))
  *keys, rows = jax.lax.sort(keys + (rows,), num_keys=len(keys))
  changed = jnp.zeros(keys[0].shape[0] - 1, bool)
  for key in keys:
    changed = changed | (key[1:] != key[:-1])
  segment = jnp.cumsum(jnp.concatenate([jnp.zeros(1, jnp.int32), changed.astype(jnp.int32)]))
  ok = keys[0] == 0
  counts = jnp.zeros((G * L, G), jnp.float32).at[segment, rows].add(ok.astype(jnp.float32))
  here = counts[segment]                                          # [W, G]
  own = jnp.take_along_axis(here, rows[:, None], axis=1)[:, 0]
  others = jnp.max(jnp.where(jnp.arange(G)[None, :] == rows[:, None], -1.0, here), axis=1)
  clipped = jnp.where(ok, jnp.minimum(own, others) / jnp.maximum(own, 1.0), 0.0)
  return jnp.zeros(G, jnp.float32).at[rows].add(clipped)


def _group_self_bleu(tokens: jax.Array, mask: jax.Array, max_n: int) -> jax.Array:
  G, T = tokens.shape
  lengths = jnp.sum(mask, axis=1).astype(jnp.float32)            # c, per hypothesis
  log_precision = jnp.zeros(G, jnp.float32)
  no_unigram = jnp.zeros(G, bool)
  for n in range(1, max_n + 1):
    total = jnp.maximum(lengths - n + 1, 0.0)
    if n > T:
      matches = jnp.zeros(G, jnp.float32)
    else:
      matches = _group_matches(tokens, mask, n)
    if n == 1:
      no_unigram = matches == 0
      precision = matches / jnp.maximum(total, 1.0)
    else:
      precision = (matches + 1.0) / (total + 1.0)
    log_precision = log_precision + jnp.log(jnp.maximum(precision, 1e-30)) / max_n
  # The closest other row's length, the shorter on a tie.
  gap = jnp.abs(lengths[None, :] - lengths[:, None]) * (2.0 * T + 2.0) + lengths[None, :]
  gap = jnp.where(jnp.eye(G, dtype=bool), jnp.inf, gap)
  ref = jnp.take(lengths, jnp.argmin(gap, axis=1))
  brevity = jnp.where(lengths > ref, 1.0, jnp.exp(1.0 - ref / jnp.maximum(lengths, 1.0)))
  bleu = jnp.where(no_unigram | (lengths == 0), 0.0, brevity * jnp.exp(log_precision))
  return jnp.mean(bleu)
