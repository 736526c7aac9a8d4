"""DPO: the loss and its metrics by hand, cDPO's label smoothing, and one offline step of a tiny
model through rl/offline.py (the loss is log 2 when policy == reference; an update raises the
implicit margin on the pair it trained on)."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.objectives import base, dpo
from rlalign.rl import offline, update
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from tests.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _close(x, expected, tol=1e-5):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------- the loss on [2B, T] arrays

# Two pairs (B = 2): rows 0, 1 chosen; rows 2, 3 their rejected completions. Masked tokens
# hold large values that would change every figure if they counted.
LOGP = np.array([[-0.5, -1.0, -9.0],    # pair 0 chosen:   -1.5
                 [-2.0, -0.5, -0.5],    # pair 1 chosen:   -3.0
                 [-1.0, -2.0, -7.0],    # pair 0 rejected: -3.0
                 [-0.2, -0.3, -5.0]])   # pair 1 rejected: -0.5
REF = np.array([[-1.0, -1.0, 4.0],      # pair 0 chosen:   -2.0
                [-1.0, -1.0, -1.0],     # pair 1 chosen:   -3.0
                [-1.0, -1.0, 3.0],      # pair 0 rejected: -2.0
                [-0.5, -0.5, 8.0]])     # pair 1 rejected: -1.0
MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], bool)
BETA = 0.5
# Implicit rewards beta * (logp - ref):
#   pair 0: chosen 0.5 * (-1.5 + 2.0) = 0.25, rejected 0.5 * (-3.0 + 2.0) = -0.5, margin 0.75
#   pair 1: chosen 0.5 * (-3.0 + 3.0) = 0.0,  rejected 0.5 * (-0.5 + 1.0) = 0.25, margin -0.25
CHOSEN_R, REJECTED_R = [0.25, 0.0], [-0.5, 0.25]
MARGINS = [0.75, -0.25]


def _call(hp, logp=LOGP, ref=REF, mask=MASK):
  outputs = {"policy": base.ModelOutputs(logprobs=jnp.asarray(logp, jnp.float32))}
  batch = {"mask": jnp.asarray(mask), "ref_logprobs": jnp.asarray(ref, jnp.float32)}
  return dpo.dpo_loss(hp, outputs, batch)


def test_dpo_loss_and_metrics_by_hand():
  loss, metrics = _call(dpo.DPOConfig(beta=BETA))
  chex.assert_shape(loss, ())
  _close(loss, -(_log_sigmoid(0.75) + _log_sigmoid(-0.25)) / 2)
  _close(metrics["reward_accuracy"], 0.5)                 # pair 0 only
  _close(metrics["margin"], (0.75 - 0.25) / 2)
  _close(metrics["chosen_reward"], sum(CHOSEN_R) / 2)
  _close(metrics["rejected_reward"], sum(REJECTED_R) / 2)
  # The policy's own preference: -1.5 > -3.0 (pair 0), but -3.0 < -0.5 (pair 1).
  _close(metrics["pref_accuracy"], 0.5)
  _close(metrics["chosen_logprob"], (-1.5 - 3.0) / 2)
  _close(metrics["rejected_logprob"], (-3.0 - 0.5) / 2)


def test_pref_accuracy_does_not_read_the_reference_but_reward_accuracy_does():
  # A reference that strongly favours both rejected completions flips every implicit reward
  # margin positive; the policy's own preference stays what it was.
  ref = REF.copy()
  ref[2:, :2] += 10.0
  _, metrics = _call(dpo.DPOConfig(beta=BETA), ref=ref)
  _close(metrics["reward_accuracy"], 1.0)
  _close(metrics["pref_accuracy"], 0.5)


def test_cdpo_label_smoothing_by_hand():
  eps = 0.2
  loss, _ = _call(dpo.DPOConfig(beta=BETA, label_smoothing=eps))
  expected = sum(-(1 - eps) * _log_sigmoid(m) - eps * _log_sigmoid(-m) for m in MARGINS) / 2
  _close(loss, expected)
  # With smoothing the per-pair loss is minimised at a finite margin, log((1 - eps) / eps):
  # its derivative -(1 - eps) sigma(-m) + eps sigma(m) vanishes there.
  m_star = math.log((1 - eps) / eps)
  one_pair = lambda m: -(1 - eps) * jax.nn.log_sigmoid(m) - eps * jax.nn.log_sigmoid(-m)
  _close(jax.grad(one_pair)(jnp.float32(m_star)), 0.0)
  assert float(jax.grad(one_pair)(jnp.float32(m_star + 1.0))) > 0


def test_dpo_gradient_by_hand():
  # d loss / d logp of a masked chosen token is -beta sigma(-m) / B; of a rejected token
  # +beta sigma(-m) / B; masked tokens get nothing.
  hp = dpo.DPOConfig(beta=BETA)

  def loss_of(logp):
    return _call(hp, logp=logp)[0]

  grad = np.asarray(jax.grad(loss_of)(jnp.asarray(LOGP, jnp.float32)))
  s = [1 / (1 + math.exp(m)) for m in MARGINS]  # sigma(-m)
  expected = np.array([[-BETA * s[0] / 2] * 2 + [0.0],
                       [-BETA * s[1] / 2] * 3,
                       [BETA * s[0] / 2] * 2 + [0.0],
                       [BETA * s[1] / 2] * 2 + [0.0]])
  _close(grad, expected)


def test_dpo_registered_as_a_pairs_objective_with_a_reference():
  objective = objectives.get("dpo")
  assert objective.loss_fn is dpo.dpo_loss and objective.hparams is dpo.DPOConfig
  assert objective.batch == "pairs"
  assert dict(objective.trains) == {"policy": ("logprobs",)}
  assert objective.needs_reference(dpo.DPOConfig())


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=0.0), r"phases\.dpo\.objective\.beta must be positive"),
    (dict(beta=float("nan")), r"phases\.dpo\.objective\.beta must be positive"),
    (dict(label_smoothing=0.5), r"phases\.dpo\.objective\.label_smoothing"),
    (dict(label_smoothing=-0.1), r"phases\.dpo\.objective\.label_smoothing"),
])
def test_dpo_config_errors_name_the_key(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dpo.DPOConfig(**kwargs).validate("phases.dpo.objective")


# ---------------------------------------------------------------- one offline step of a tiny model

TINY = tfm.ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                       head_dim=8, d_ff=32)


def _pairs_batch():
  """Two pairs: left-padded prompts [B, 3], right-padded completions [B, 3]."""
  return {
      "prompt_tokens": jnp.array([[0, 1, 5], [1, 4, 6]], jnp.int32),
      "prompt_mask": jnp.array([[0, 1, 1], [1, 1, 1]], bool),
      "chosen_tokens": jnp.array([[3, 4, 2], [5, 2, 0]], jnp.int32),
      "chosen_mask": jnp.array([[1, 1, 1], [1, 1, 0]], bool),
      "rejected_tokens": jnp.array([[3, 7, 2], [6, 6, 2]], jnp.int32),
      "rejected_mask": jnp.array([[1, 1, 1], [1, 1, 1]], bool),
  }


def _sequence_logp(params, prompt_tokens, prompt_mask, tokens, mask):
  """log pi(completion | prompt) per row, from a plain forward pass (not update.py's)."""
  full = jnp.concatenate([prompt_tokens, tokens], axis=1)
  full_mask = jnp.concatenate([prompt_mask, mask], axis=1)
  hidden, _ = tfm.forward(params, full, tfm.positions_from_mask(full_mask), full_mask, TINY)
  logp = jax.nn.log_softmax(tfm.lm_logits(params, hidden, TINY), axis=-1)
  P = prompt_tokens.shape[1]
  # The token at column P + t is predicted at column P + t - 1.
  picked = jnp.take_along_axis(logp[:, P - 1:-1], tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(mask, picked, 0.0), axis=-1)


def _implicit_margin(policy, reference, batch, beta):
  seq = lambda p, side: _sequence_logp(p, batch["prompt_tokens"], batch["prompt_mask"],
                                       batch[f"{side}_tokens"], batch[f"{side}_mask"])
  return beta * ((seq(policy, "chosen") - seq(reference, "chosen"))
                 - (seq(policy, "rejected") - seq(reference, "rejected")))


def test_offline_dpo_step_starts_at_log2_and_raises_the_margin():
  hp = dpo.DPOConfig(beta=0.5)
  params = tfm.init(TINY, jax.random.key(0, impl="rbg"))
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=3e-2))
  roles = {"policy": roles_lib.RoleSpec(TINY, optimizer),
           "reference": roles_lib.RoleSpec(TINY)}
  binding = update.Binding(objectives.get("dpo"), hp, roles, {})
  spec = offline.OfflineSpec(binding, reference="reference")
  step = offline.make_offline_step(spec)
  # The state gets its own copy of the params (it is donated); the reference keeps these.
  state = state_lib.init_state({"policy": jax.tree.map(jnp.copy, params)},
                               roles_lib.optimizers(roles))
  frozen = {"reference": params}
  batch = _pairs_batch()

  # Policy == reference: every implicit reward is 0, so the loss is -log sigma(0) = log 2.
  _close(_implicit_margin(params, params, batch, hp.beta), [0.0, 0.0], tol=1e-6)
  state, metrics = step(state, batch, jax.random.key(1), frozen)
  _close(metrics["loss"], math.log(2.0), tol=1e-5)
  _close(metrics["margin"], 0.0, tol=1e-6)
  _close(metrics["tokens"], 3 + 2 + 3 + 3)  # every masked completion token, both halves

  for _ in range(4):
    state, metrics = step(state, batch, jax.random.key(1), frozen)
  trained = state["roles"]["policy"]["params"]
  margins = np.asarray(_implicit_margin(trained, params, batch, hp.beta))
  assert np.all(margins > 0.05), margins
  # The step's own metric agrees with the independent forward pass (at the params before
  # the last update, so compare one more step's reported margin with these params).
  _, metrics = step(state, batch, jax.random.key(1), frozen)
  _close(metrics["margin"], margins.mean(), tol=1e-4)
  assert float(metrics["loss"]) < math.log(2.0)
  # The reference was read, never trained.
  chex.assert_trees_all_close(frozen["reference"], params)


def test_offline_dpo_needs_a_reference_role():
  roles = {"policy": roles_lib.RoleSpec(TINY, state_lib.make_optimizer(
      state_lib.OptimizerConfig()))}
  spec = offline.OfflineSpec(update.Binding(objectives.get("dpo"), dpo.DPOConfig(), roles, {}))
  with pytest.raises(ValueError, match="needs a reference role"):
    spec.check()


# ---------------------------------------------------------------- the config file


def test_dpo_jsonl_config_parses_and_needs_both_files():
  from rlalign import config as config_lib
  c = load_config("dpo_jsonl", "/tmp/train.jsonl,/tmp/test.jsonl")
  c.data.data_dir = "/tmp/unused"
  cfg = config_lib.from_config_dict(c)
  phases = cfg.phase_configs
  assert cfg.recipe.settings.order == ("warm_start", "dpo")
  assert phases["dpo"].objective.name == "dpo" and phases["dpo"].kind == "offline"
  assert phases["warm_start"].objective.name == "sft"
  roles = cfg.role_configs
  assert not roles["reference"].trainable
  assert roles["reference"].weights.source == "role" and roles["reference"].weights.role == "policy"
  assert phases["dpo"].objective.hparams.beta == 0.5
  with pytest.raises(ValueError, match="train and held-out"):
    load_config("dpo_jsonl", "/tmp/train.jsonl")


# ---------------------------------------------------------------- end to end, through the CLI

# The smoke shape of presets.shrink_for_smoke, as command-line overrides.
SMOKE_OVERRIDES = ("--config.model.d_model=32", "--config.model.n_heads=2",
                   "--config.model.d_ff=64", "--config.train.log_every=2",
                   "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
                   "--config.train.eval_batch_size=16")


@pytest.mark.slow
def test_dpo_jsonl_config_end_to_end(tmp_path, cli):
  import json
  import sys

  from rlalign.data import addition
  train, test = addition.write_pairs(str(tmp_path / "pairs"), num_train=64, num_test=16)
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "rlalign.main",
         f"--config={os.path.join(REPO, 'configs', 'dpo_jsonl.py')}:{train},{test}",
         f"--workdir={workdir}", *SMOKE_OVERRIDES,
         "--config.phases.warm_start.steps=4", "--config.phases.warm_start.batch_size=8",
         "--config.phases.dpo.steps=4", "--config.phases.dpo.batch_size=8"]
  cli.run(cmd, cli.env())
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  start = [r for r in records if r["step"] == 4 and "eval/dpo/loss" in r]
  assert len(start) == 1, records
  # The reference is a copy of the policy as the dpo phase starts (after the warm start), so
  # the held-out loss at that point is exactly log 2 and every implicit reward is 0.
  assert start[0]["eval/dpo/loss"] == pytest.approx(math.log(2.0), abs=1e-5)
  assert start[0]["eval/dpo/margin"] == pytest.approx(0.0, abs=1e-6)
  last = records[-1]
  assert last["step"] == 8
  for key in ("dpo/loss", "dpo/reward_accuracy", "dpo/pref_accuracy", "eval/dpo/pref_accuracy",
              "eval/dpo/reward_accuracy", "eval/pass@1_greedy"):
    assert key in last, key
