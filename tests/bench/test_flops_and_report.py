"""Tests for the benchmark's FLOP accounting and its report (not the timings themselves)."""
import jax
import pytest

from rlalign.bench import flops, report, settings as S
from rlalign.models import transformer as tfm


def test_matmul_params_counts_every_matrix_but_the_embedding_lookup():
  cfg = tfm.ModelConfig(vocab_size=10, d_model=4, n_layers=3, n_heads=2, n_kv_heads=1,
                        head_dim=2, d_ff=6, tie_embeddings=False)
  # Per layer: q 4x2x2, k 4x1x2, v 4x1x2, o 2x2x4, gate/up 4x6, down 6x4; head 4x10.
  assert flops.matmul_params(cfg) == 3 * (16 + 8 + 8 + 16 + 24 + 24 + 24) + 40
  params = jax.eval_shape(lambda: tfm.init(cfg, jax.random.key(0)))
  norms = 3 * 4 * 2 + 4
  assert flops.matmul_params(cfg) == tfm.count_params(params) - 10 * 4 - norms


def test_grpo_iteration_flops_by_hand():
  cfg = tfm.ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=1, n_kv_heads=1,
                        head_dim=4, d_ff=4, tie_embeddings=True)
  n = flops.matmul_params(cfg)
  assert n == 4 * 4 * 4 + 3 * 16 + 40
  parts = flops.grpo_iteration_flops(cfg, rollouts=3, prompt_len=5, new_tokens=2, updates=2)
  assert parts["train"] == 6 * n * 3 * 7 * 2
  assert parts["reference"] == 2 * n * 3 * 7
  assert parts["generate"] == 2 * n * 3 * 2
  assert parts["total"] == parts["train"] + parts["reference"] + parts["generate"]


def test_update_flops_adds_causal_attention():
  cfg = tfm.ModelConfig(vocab_size=8, d_model=4, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=2, d_ff=4)
  out = flops.update_flops(cfg, batch=2, seq=3)
  assert out["dense_6n"] == 6 * flops.matmul_params(cfg) * 6
  # 4 * layers * heads * head_dim * mean context (2) per token, times 3 for backward.
  assert out["attention"] == 3 * 4 * 2 * 2 * 2 * 2.0 * 6


def _grpo(step_s):
  return {"status": "ok", "result": {"median_step_s": step_s, "startup_s": 10.0,
                                     "first_step_s": 5.0}}


def test_report_verdicts_use_the_slowest_ratio():
  results = {"grpo/tiny/rlalign": _grpo(0.01), "grpo/tiny/trl": _grpo(0.05),
             "grpo/tiny/tunix": _grpo(0.02),
             "grpo/medium/rlalign": _grpo(1.0), "grpo/medium/trl": _grpo(2.0),
             "grpo/medium/tunix": {"status": "failed", "why": "exit 1", "log": "x"}}
  text = "\n".join(report.grpo_table(results))
  tiny = next(l for l in text.splitlines() if l.startswith("| tiny"))
  assert "5.00×" in tiny and "2.00×" in tiny and "missed: 2.00× of 3×" in tiny
  medium = next(l for l in text.splitlines() if l.startswith("| medium"))
  assert "met (≥1.3×)" in medium
  assert "grpo/medium/tunix: failed (exit 1)" in text


def test_report_sampler_target_line():
  point = lambda tps: {"batch": 32, "prompt_len": 32, "new_tokens": 128, "tokens_per_s": tps}
  results = {"sampler/rlalign": {"status": "ok", "result": {"points": [point(9000.0)]}},
             "sampler/transformers": {"status": "ok", "result": {"points": [point(2000.0)]}}}
  text = "\n".join(report.sampler_table(results))
  assert "4.50×" in text and "met (≥3×)" in text


def test_settings_match_the_issue():
  assert [(s.prompts_per_step, s.group_size, s.new_tokens)
          for s in S.GRPO_SETTINGS.values()] == [(2, 2, 16), (4, 4, 64), (8, 8, 256)]
  assert (S.MODELS["l2_d128"].n_layers, S.MODELS["l2_d128"].d_model) == (2, 128)
  assert (S.MODELS["l4_d256"].n_layers, S.MODELS["l4_d256"].d_model) == (4, 256)
  assert S.even_token_fraction([2, 3, 4, 5]) == 0.5


def test_rounds_merge_to_their_median_and_keep_the_cold_start():
  from rlalign.bench import run
  results = {"grpo/tiny/trl": _grpo(0.05), "grpo/tiny/trl#1": _grpo(0.02),
             "grpo/tiny/trl#2": {"status": "failed", "why": "exit 1", "log": "x"},
             "grpo/tiny/tunix": _grpo(0.03)}
  results["grpo/tiny/trl#1"]["result"]["startup_s"] = 1.0
  run.merge_rounds(results)
  merged = results["grpo/tiny/trl"]["result"]
  assert merged["round_median_step_s"] == [0.05, 0.02]
  assert merged["median_step_s"] == pytest.approx(0.035)
  assert merged["startup_s"] == 10.0  # round 0's: the only cold start
  assert results["grpo/tiny/tunix"]["result"]["median_step_s"] == 0.03
