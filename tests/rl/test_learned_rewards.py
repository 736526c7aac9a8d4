"""Learned rewards inside the fused iteration: an ensemble of reward models of other shapes, a
generative verifier, LSC against the reference's own samples and a gold monitor, all in one
program with no host round trip; each checked against a separate computation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.profiling import count_compilations
from rlalign.rewards import judges, learned, transforms
from rlalign.rewards.base import RewardTerm
from rlalign.rewards.transforms import TransformSpec
from rlalign.rl import iteration, roles as roles_lib, update
from rlalign.sampling import SamplingConfig
from tests.rl.test_roles import POLICY, REWARD_MODEL, TOKENIZER, make_batch

SMALL_RM = dataclasses.replace(POLICY, heads=("scalar",))
VERIFIER = dataclasses.replace(POLICY, d_model=48, n_heads=3, n_kv_heads=3, d_ff=96)
YES, NO = TOKENIZER.encode("1")[0], TOKENIZER.encode("0")[0]  # a 16-token vocabulary's verdicts
VERIFIER_SETTINGS = judges.VerifierSettings(
    role="verifier", template=judges.Template(middle="=", suffix="+=").resolve_template(TOKENIZER),
    yes="1", no="0", yes_id=YES, no_id=NO)


def lsc(quantile=0.5, samples=3):
  return TransformSpec("lsc", transforms.LSCSettings(quantile=quantile, samples=samples))


def make_spec(rewards, monitors=(), group_size=4):
  objective = objectives.get("grpo")
  rl = iteration.RLConfig(batch_size=4 * group_size, group_size=group_size, rewards=rewards,
                          monitors=monitors)
  roles = {"policy": roles_lib.RoleSpec(POLICY, optax.adam(1e-2)),
           "reference": roles_lib.RoleSpec(POLICY),
           "rm_big": roles_lib.RoleSpec(REWARD_MODEL), "rm_small": roles_lib.RoleSpec(SMALL_RM),
           "verifier": roles_lib.RoleSpec(VERIFIER)}
  binding = update.Binding(objective, objective.hparams(), roles, {})
  return iteration.IterationSpec(SamplingConfig(max_new_tokens=4, stop_tokens=(2,)), rl, binding)


def frozen_roles():
  return {"reference": tfm.init(POLICY, jax.random.key(5)),
          "rm_big": tfm.init(REWARD_MODEL, jax.random.key(1)),
          "rm_small": tfm.init(SMALL_RM, jax.random.key(2)),
          "verifier": tfm.init(VERIFIER, jax.random.key(3))}


def rollouts_of(spec, policy, seed=4):
  return jax.jit(lambda p, b, r: iteration.rollout(p, b, r, spec))(
      policy, make_batch(), jax.random.key(seed))


def test_ensemble_aggregates_its_members_scores():
  ensembles = tuple(RewardTerm("reward_ensemble", source=aggregate,
                               settings=learned.EnsembleSettings(
                                   roles=("rm_big", "rm_small"), aggregate=aggregate,
                                   std_coef=0.5))
                    for aggregate in learned.ENSEMBLE_AGGREGATES)
  members = tuple(RewardTerm("reward_model", settings=learned.RewardModelSettings(role=r),
                             source=r) for r in ("rm_big", "rm_small"))
  spec = make_spec(ensembles + members)
  policy = tfm.init(POLICY, jax.random.key(0))
  scores = iteration.score(rollouts_of(spec, policy), {"policy": policy}, frozen_roles(), spec)
  k = np.stack([np.asarray(scores["rm_big"]), np.asarray(scores["rm_small"])])
  expected = {"mean": k.mean(0), "min": k.min(0),
              "mean_minus_std": k.mean(0) - 0.5 * k.std(0)}
  for aggregate in learned.ENSEMBLE_AGGREGATES:
    np.testing.assert_allclose(scores[aggregate], expected[aggregate], rtol=1e-5, atol=1e-6)
  assert np.ptp(k[0] - k[1]) > 0  # the members disagree, so the aggregates differ


def test_generative_verifier_is_p_yes_over_yes_and_no_row_by_row():
  spec = make_spec((RewardTerm("generative_verifier", settings=VERIFIER_SETTINGS),))
  policy = tfm.init(POLICY, jax.random.key(0))
  rollouts = rollouts_of(spec, policy)
  frozen = frozen_roles()
  scores = iteration.score(rollouts, {"policy": policy}, frozen, spec)
  template = VERIFIER_SETTINGS.template
  width = 32
  verdict = jax.jit(lambda t, m: jax.nn.softmax(tfm.lm_logits(
      frozen["verifier"], tfm.forward(frozen["verifier"], t, tfm.positions_from_mask(m), m,
                                      VERIFIER)[0][:, -1], VERIFIER)))
  for row in range(rollouts["prompt_tokens"].shape[0]):
    prompt = np.asarray(rollouts["prompt_tokens"][row])[np.asarray(rollouts["prompt_mask"][row])]
    completion = np.asarray(rollouts["completion_tokens"][row])[
        np.asarray(rollouts["completion_mask"][row])]
    completion = completion[completion != 2]  # the verifier never sees the stop token
    real = np.concatenate([prompt, template.middle_ids, completion, template.suffix_ids])
    tokens = np.zeros((1, width), np.int32)  # each row alone, left-padded to one width
    tokens[0, width - len(real):] = real
    p = verdict(tokens, np.arange(width)[None] >= width - len(real))[0]
    np.testing.assert_allclose(scores["generative_verifier"][row], p[YES] / (p[YES] + p[NO]),
                               rtol=1e-5, atol=1e-6)


def test_lsc_reference_is_the_quantile_of_the_references_own_samples():
  term = RewardTerm("reward_model", settings=learned.RewardModelSettings(role="rm_small"),
                    transforms=(lsc(quantile=0.75, samples=3),))
  spec = make_spec((term,))
  frozen = frozen_roles()
  policy = tfm.init(POLICY, jax.random.key(0))
  batch, rng = make_batch(), jax.random.key(9)
  got = iteration.reference_rewards(batch, rng, {"policy": policy}, frozen, spec)
  # Separately: three reference samples per prompt, scored by the reward model.
  sampled = iteration.rollout(frozen["reference"], batch, rng, spec, group_size=3)
  scores = learned.reward_model(sampled, {"rm_small": learned.base.RoleModel(SMALL_RM,
                                                                              frozen["rm_small"])},
                                learned.RewardModelSettings(role="rm_small"))
  r_ref = np.quantile(np.asarray(scores).reshape(4, 3), 0.75, axis=1)
  np.testing.assert_allclose(got["reward_model"], np.repeat(r_ref, 4), rtol=1e-5)


def test_learned_rewards_fuse_into_one_program_without_host_round_trips():
  ensemble = learned.EnsembleSettings(roles=("rm_big", "rm_small"))
  rewards = (
      RewardTerm("reward_ensemble", settings=ensemble, transforms=(TransformSpec(
          "group_norm", transforms.NormSettings()),)),
      RewardTerm("generative_verifier", 0.5, VERIFIER_SETTINGS),
      RewardTerm("reward_model", 0.5, learned.RewardModelSettings(role="rm_small"),
                 source="lsc_rm", transforms=(lsc(),)),
  )
  spec = make_spec(rewards, monitors=(RewardTerm("exact_match"),))
  assert spec.fused
  step = iteration.make_rl_step(spec)
  policy = tfm.init(POLICY, jax.random.key(0))
  state = {"step": jnp.zeros((), jnp.int32),
           "roles": {"policy": {"params": policy, "opt_state": optax.adam(1e-2).init(policy)}}}
  frozen = jax.device_put(frozen_roles())
  batch = jax.device_put(make_batch())
  rng = jax.device_put(jax.random.key(0))
  hlo = step.lower(state, batch, rng, frozen).as_text()
  assert "callback" not in hlo  # no host computation inside the program
  before = np.asarray(policy["embed"])
  with count_compilations() as compiled:
    for _ in range(2):
      # Any device-to-host copy inside the step (a host reward, a Python callback) raises.
      with jax.transfer_guard_device_to_host("disallow"):
        state, metrics = step(state, batch, rng, frozen)
  assert compiled.count == 1
  for key in ("reward/reward_ensemble", "reward/generative_verifier", "reward/lsc_rm",
              "reward/lsc_rm/reference", "monitor/exact_match", "kl_sequence",
              "diversity/distinct_1", "diversity/distinct_2", "diversity/self_bleu", "pass@4"):
    assert np.isfinite(float(metrics[key])), key
  assert 0.0 <= float(metrics["diversity/self_bleu"]) <= 1.0
  assert 0.0 <= float(metrics["reward/generative_verifier"]) <= 1.0
  assert not np.allclose(before, np.asarray(state["roles"]["policy"]["params"]["embed"]))


def test_a_monitor_never_moves_the_update():
  """The same step with and without a monitor trains identically: monitors are not rewards."""
  rewards = (RewardTerm("reward_model", settings=learned.RewardModelSettings(role="rm_small")),)
  outs = []
  for monitors in ((), (RewardTerm("exact_match"),
                        RewardTerm("reward_model", settings=learned.RewardModelSettings(
                            role="rm_big"), source="gold"))):
    spec = make_spec(rewards, monitors=monitors)
    policy = tfm.init(POLICY, jax.random.key(0))
    state = {"step": jnp.zeros((), jnp.int32),
             "roles": {"policy": {"params": policy, "opt_state": optax.adam(1e-2).init(policy)}}}
    state, metrics = iteration.make_rl_step(spec)(state, make_batch(), jax.random.key(0),
                                                  frozen_roles())
    outs.append((state, metrics))
  np.testing.assert_array_equal(outs[0][0]["roles"]["policy"]["params"]["embed"],
                                outs[1][0]["roles"]["policy"]["params"]["embed"])
  assert "monitor/gold" in outs[1][1] and "monitor/gold" not in outs[0][1]
  assert float(outs[0][1]["reward"]) == float(outs[1][1]["reward"])


def test_judge_score_read_on_the_host_matches_an_independent_parse_of_its_judgements():
  """parse='host': the verifier still generates in-graph, the host reads its decoded
  judgement with a regex (scores of any width), and a run with it splits around that read."""
  import re
  from rlalign.rewards import base as reward_base
  from rlalign.sampling import sampler
  settings = judges.JudgeScoreSettings(role="verifier", template=judges.Template(
      middle="=", suffix="+"), marker="=", max_score=30, max_new_tokens=6, temperature=1.0,
                                       parse="auto", fallback=-1.0).resolve(TOKENIZER)
  assert settings.parse == "host"  # two-digit scores: only the host reads them
  term = RewardTerm("judge_score", settings=settings)
  assert term.finishes_on_host
  spec = make_spec((term,))
  assert not spec.fused
  policy = tfm.init(POLICY, jax.random.key(0))
  frozen = frozen_roles()
  rollouts = rollouts_of(spec, policy)
  key = jax.random.key(9)
  scores = iteration.score(rollouts, {"policy": policy}, frozen, spec, key)
  decode = lambda ids: TOKENIZER.decode(ids, strict=False)
  ours = reward_base.finish_on_host(spec.rewards, jax.device_get(scores), decode)["judge_score"]
  # Independently: the same judgements by the sampler, decoded, parsed by the test's regex.
  tokens, mask = judges.judge_input(rollouts, settings.template)
  out = sampler.sample(frozen["verifier"], tokens, mask, key, VERIFIER,
                       SamplingConfig(max_new_tokens=6, temperature=1.0))
  texts = [decode(np.asarray(t)[np.asarray(m)]) for t, m in zip(out.tokens, out.mask)]
  found = [re.search(r"=(\d+)", t) for t in texts]
  expected = np.array([min(int(f.group(1)) / 30, 1.0) if f else -1.0 for f in found])
  assert 0 < sum(f is not None for f in found) < len(found), texts  # both cases occur
  np.testing.assert_allclose(ours, expected, atol=1e-6)
  # In a run: the step splits, and its reward is a mean of such reads.
  state = {"step": jnp.zeros((), jnp.int32),
           "roles": {"policy": {"params": policy, "opt_state": optax.adam(1e-2).init(policy)}}}
  _, metrics = iteration.make_rl_step(spec, decode=decode)(state, make_batch(),
                                                             jax.random.key(0), frozen)
  assert -1.0 <= float(metrics["reward/judge_score"]) <= 1.0


def test_parse_score_text_by_hand():
  s = judges.JudgeScoreSettings(marker="Score:", max_score=10, fallback=-1.0, parse="host")
  texts = ["ok. Score: 7", "Score:12 then Score: 3", "score: 5", "Score: 2.5/10", "Score: -4",
           "no verdict", "Score: x 9"]
  np.testing.assert_allclose(judges.parse_score_text(texts, s),
                             [0.7, 1.0, -1.0, 0.25, -1.0, -1.0, -1.0])
