"""Self-Rewarding: the judge seed's rows against the gold rubric read on the host, the
evaluator's summary by hand, the recipe's refusals, and runs of the config."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.data import rubric
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer
from rlalign.models import transformer as tfm
from rlalign.recipes import self_rewarding as sr
from rlalign.rewards import base as reward_base
from rlalign.rewards import judges
from rlalign.rewards import rubric as rubric_reward
from rlalign.rl import iteration, update
from rlalign.rl import roles as roles_lib
from rlalign.sampling import sampler
from tests.configs import typed_config

TOK = CharTokenizer(ASCII_ALPHABET)
MODEL = tfm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=16, d_ff=64)
JUDGE = judges.JudgeScoreSettings(
    role="policy", max_score=5, max_new_tokens=10,
    template=judges.Template(prefix="", middle=" ", suffix=" points? ")).resolve(TOK)
META = judges.MetaJudgeSettings(between=" | ", question=" which? ").resolve(TOK)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "self_rewarding_rubric.py") + ":self,smoke"


def typed(arg, tmp_path, **changes):
  return typed_config("self_rewarding_rubric", arg, tmp_path, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"phases.round_2.rewards": {"rubric_points": 1.0}},
     "phases.round_2 reads the gold judge 'rubric_points'"),
    ({"phases.round_1.monitors": {"gold": {"name": "rubric_points"}}},
     "phases.round_1 reads the gold judge"),
    ({"phases.round_1.objective": {"name": "grpo"}, "phases.round_1.sample_from": ""},
     "objective must be online_dpo"),
    ({"phases.round_1.objective": {"name": "grpo"}},
     "round_1.sample_from: objective 'grpo' reads the sampler's log-probs"),
    ({"phases.round_1.sample_from": "policy"}, "round_1.sample_from must name a frozen slot"),
    ({"phases.round_3.rewards.judge.template.suffix": " score? "}, "asks its judge in other"),
    ({"phases.round_1.rewards.judge.max_score": 9}, "asks its judge in other"),
    ({"recipe.seed_phase": "round_1"}, "must be an sft phase"),
    ({"recipe.seed_reward": "exact_match"}, "seed_reward 'exact_match' is not one of"),
    ({"recipe.rounds": ("round_1", "round_9")}, "recipe.rounds names \\['round_9'\\]"),
    ({"recipe.rounds": ()}, "recipe.rounds must name"),
    ({"recipe.eval_samples": 1}, "eval_samples must be >= 2"),
    ({"recipe.meta_rounds": True, "recipe.meta_share": 0.01}, "meta_share \\(0.01\\) must pose"),
    ({"recipe.meta_rounds": True, "phases.round_2.rewards.length": 0.1},
     "round_2.rewards must be one judge_score term"),
])
def test_the_recipe_refuses_runs_it_cannot_make_sense_of(changes, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    typed("self,smoke", tmp_path, **changes)


def test_only_the_oracle_arm_trains_on_the_gold_judge(tmp_path):
  gold = typed("gold,smoke", tmp_path)
  assert gold.recipe.settings.oracle
  assert all(t.name == "rubric_points" for n in gold.recipe.settings.rounds
             for t in gold.phase_configs[n].rewards)
  for arm, judge in (("self", "reference_{k}"), ("frozen", "judge")):
    cfg = typed(f"{arm},smoke", tmp_path)
    assert not cfg.recipe.settings.oracle
    for k, name in enumerate(cfg.recipe.settings.rounds, 1):
      (term,) = cfg.phase_configs[name].rewards
      assert term.name == "judge_score" and term.roles == (judge.format(k=k),)
      assert cfg.phase_configs[name].role("reference") == f"reference_{k}"


def _text(tokens, mask):
  """Every real token but the stop, one character each (a random model samples ids outside
  the alphabet, and PAD or BOS: each is one character that is no digit)."""
  char = lambda t: TOK.alphabet[t - 3] if 3 <= t < 3 + len(TOK.alphabet) else "\ufffd"
  return "".join(char(int(t)) for t, m in zip(tokens, mask) if m and t != TOK.eos_id)


def test_the_seed_judgements_spell_what_the_judge_parser_reads():
  targets = sr.judgement_ids(JUDGE, TOK, TOK.eos_id)
  for k in range(6):
    assert _text(targets.tokens[k], targets.mask[k]) == f"Score: {k}"
    value, found = judges.parse_score(jnp.asarray(targets.tokens[k:k + 1]),
                                      jnp.asarray(targets.mask[k:k + 1]), JUDGE)
    assert bool(found[0]) and float(value[0]) == k


def _batch(prompts):
  rows = list(rubric.generate("train", prompts, 0.4, 0))
  def pack(texts, width, left, bos=False, eos=False):
    tokens = np.zeros((len(texts), width), np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, t in enumerate(texts):
      ids = [TOK.bos_id] * bos + TOK.encode(t) + [TOK.eos_id] * eos
      cols = slice(width - len(ids), width) if left else slice(0, len(ids))
      tokens[i, cols], mask[i, cols] = ids, True
    return jnp.asarray(tokens), jnp.asarray(mask)
  out = {}
  out["prompt_tokens"], out["prompt_mask"] = pack([r["prompt"] for r in rows], 10, True, bos=True)
  out["answer_tokens"], out["answer_mask"] = pack([r["answer"] for r in rows], 8, False, eos=True)
  out["demo_tokens"], out["demo_mask"] = pack([r["demonstration"] for r in rows], 8, False,
                                              eos=True)
  return out, rows


def _sampling(group_size):
  objective = objectives.get("sft")
  roles = {"policy": roles_lib.RoleSpec(MODEL, optax.sgd(0.1))}
  binding = update.Binding(objective, objective.hparams(), roles, {}, 1, 1)
  rl = iteration.RLConfig(batch_size=4 * group_size, group_size=group_size,
                          rewards=(reward_base.RewardTerm("rubric_points"),))
  config = sampler.SamplingConfig(max_new_tokens=8, temperature=1.0,
                                  stop_tokens=(TOK.eos_id,))
  return iteration.IterationSpec(config, rl, binding, TOK.pad_id)


def test_seed_rows_are_demonstrations_then_each_sample_judged_then_each_judgement_judged():
  batch, rows = _batch(4)
  sampling = _sampling(3)
  term = reward_base.RewardTerm("rubric_points", settings=rubric_reward.RubricSettings()
                                ).resolve(TOK)
  judge = JUDGE
  params = tfm.init(MODEL, jax.random.key(0))
  out, gold = jax.jit(lambda p, b, r: sr.seed_rows(
      p, b, r, sampling=sampling, seed_term=term, judge=judge,
      targets=sr.judgement_ids(judge, TOK, TOK.eos_id), meta=META))(params, batch,
                                                                  jax.random.key(1))
  out = jax.device_get(out)
  assert out["prompt_tokens"].shape[0] == 4 + 2 * 4 * 3
  for i, r in enumerate(rows):  # the demonstrations first, as the dataset has them
    assert _text(out["prompt_tokens"][i], out["prompt_mask"][i]) == "\ufffd" + r["prompt"]
    assert _text(out["completion_tokens"][i], out["mask"][i]) == r["demonstration"]
  for j in range(12):  # then every sample, judged "Score: k" by the rubric read here
    i = 4 + j
    asked = _text(out["prompt_tokens"][i], out["prompt_mask"][i])
    prompt = rows[j // 3]["prompt"]
    assert asked.startswith("\ufffd" + prompt + " ") and asked.endswith(" points? ")
    response = asked[len(prompt) + 2:-len(" points? ")]  # after BOS, the prompt and " "
    k = int(rubric.points(rubric.spec_of(prompt), response).sum())
    assert _text(out["completion_tokens"][i], out["mask"][i]) == f"Score: {k}"
    assert round(float(gold[j]) * 5) == k
    # The meta-judge's row: the same question, the gold judgement and another one, in
    # either order, answered by the gold one's position.
    metaq = _text(out["prompt_tokens"][i + 12], out["prompt_mask"][i + 12])
    assert metaq.startswith(asked + "Score: ") and metaq.endswith(" which? ")
    a, b = metaq[len(asked):-len(" which? ")].split(" | ")
    verdict = _text(out["completion_tokens"][i + 12], out["mask"][i + 12])
    assert a != b and f"Score: {k}" in (a, b)
    assert verdict == ("A" if a == f"Score: {k}" else "B")
  # Every prompt is left-padded to one width and every completion right-padded: the real
  # tokens are contiguous, so positions run unbroken.
  for m in out["prompt_mask"]:
    assert not np.any(np.diff(m.astype(int)) < 0)
  for m in out["mask"]:
    assert not np.any(np.diff(m.astype(int)) > 0)


def test_the_summary_by_hand():
  # Two prompts, three samples each: gold points, the judge's, readable, lengths.
  rows = {"greedy": np.array([5.0, 3.0]),
          "meta_right": np.array([[True, False, True], [True, True, True]]),
          "sampled": np.array([[5.0, 3.0, 3.0], [1.0, 2.0, 4.0]]),
          "said": np.array([[4.0, 4.0, 3.0], [2.0, 1.0, 9.0]]),
          "readable": np.array([[True, True, True], [True, True, False]]),
          "length": np.array([[5.0, 6.0, 4.0], [7.0, 4.0, 5.0]]),
          "criteria": np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], bool)}
  out = sr.summarize(rows, 5)
  assert out["eval/gold_full_marks"] == 0.5
  assert out["eval/sampled_full_marks"] == 1 / 6
  assert out["eval/judge_exact"] == 1 / 6           # only (3, 3); the unreadable one is 0
  assert out["eval/judge_well_formed"] == 5 / 6
  said = np.array([4, 4, 3, 2, 1, 0.0])            # the unreadable judgement scores 0
  gold = np.array([5, 3, 3, 1, 2, 4.0])
  assert np.isclose(out["eval/judge_overscore"], np.mean(said - gold))
  # Pairs with different gold: (5,3) said (4,4) tie -> 0.5; (5,3) said (4,3) -> 1;
  # (1,2) said (2,1) -> 0; (1,4) said (2,0) -> 0; (2,4) said (1,0) -> 0.
  assert np.isclose(out["eval/judge_pairwise"], 1.5 / 5)
  length = np.array([5, 6, 4, 7, 4, 5.0])
  assert np.isclose(out["eval/judge_length_bias"], np.corrcoef(said - gold, length)[0, 1])
  assert out["eval/gold_length"] == 0.5 and out["eval/gold_first"] == 1.0
  assert np.isclose(out["eval/response_length"], length.mean())
  assert out["eval/meta_judge_accuracy"] == 5 / 6


@pytest.mark.slow  # the kill matrix runs this config too; the default suite is at its budget
def test_a_run_seeds_the_judge_then_rounds_judged_by_each_rounds_reference(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=SMOKE)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  phases = summary["phases"]
  assert list(phases) == ["warm_start", "judge_seed", "round_1", "round_2", "round_3"]
  for name in ("judge_seed", "round_1", "round_3"):
    for key in ("eval/points_greedy", "eval/judge_exact", "eval/judge_pairwise",
                "eval/judge_length_bias", "eval/gold_full_marks"):
      assert key in phases[name]["eval"], (name, key)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("judge_seed/seed_points" in r for r in records)
  assert any("reward/judge" in r for r in records)
  assert os.path.exists(os.path.join(workdir, "curves.png"))


@pytest.mark.slow
def test_from_a_hugging_face_checkpoint(tmp_path):
  """The hf config end to end on a tiny random Qwen2 whose tokenizer spells printable ASCII:
  the prompts go through its chat template, the judge reads the rubric in words, and the
  trained policy is exported."""
  import string
  from rlalign import config as config_lib, recipes
  from rlalign.models import hf
  from tests.configs import load_config
  from tests.rl import test_hf_grpo as hf_test
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
  hf_test.write_checkpoint(ckpt, hf_test.write_tokenizer(ckpt, chars))
  config = load_config("self_rewarding_rubric", f"hf:{ckpt},smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.mesh.ici = (-1, 1, 1)
  for k in (1, 2, 3):  # 8 prompts a step, one per fake device
    config.phases[f"round_{k}"].batch_size = 32
  cfg = config_lib.from_config_dict(config)
  assert cfg.data.prompt_format == "chat"
  assert cfg.recipe.settings.judge.template.suffix == sr.RUBRIC.suffix
  workdir = str(tmp_path / "run")
  summary = recipes.run(cfg, workdir)
  assert "eval/judge_pairwise" in summary["phases"]["round_3"]["eval"]
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(os.path.join(workdir, "hf"))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-4


def test_the_meta_judge_asks_both_orders_and_ties_identical_judgements():
  params = tfm.init(MODEL, jax.random.key(2))
  view = {"policy": reward_base.RoleModel(MODEL, params)}
  meta = dataclasses.replace(META, role="policy")
  judge_in = TOK.encode("L5F3E8H7: 37218 points? ")
  one = lambda text: TOK.encode(text) + [TOK.eos_id]
  texts = ["Score: 4", "Score: 3", "Score: 5", "Score: 5"]
  width = max(len(one(t)) for t in texts)
  tokens = np.zeros((4, width), np.int32)
  mask = np.zeros((4, width), bool)
  for i, t in enumerate(texts):
    tokens[i, :len(one(t))], mask[i, :len(one(t))] = one(t), True
  rollouts = {"prompt_tokens": jnp.asarray([judge_in] * 4), "prompt_mask": jnp.ones((4, len(
      judge_in)), bool), "completion_tokens": jnp.asarray(tokens),
      "completion_mask": jnp.asarray(mask)}
  got = np.asarray(reward_base.get("meta_judge").fn(rollouts, view, meta))
  assert np.allclose(got[0] + got[1], 1.0) and got[2] == got[3] == 0.5
  # By hand: P(first) of each order from the verdict logits after the question.
  def p_first(x, y):
    ids = judge_in + TOK.encode(x + " | " + y + " which? ")
    logits = judges.verdict_logits(params, MODEL, jnp.asarray([ids]),
                                   jnp.ones((1, len(ids)), bool))[0]
    return float(jax.nn.sigmoid(logits[META.first_id] - logits[META.second_id]))
  want = 0.5 * (p_first(texts[0], texts[1]) + 1 - p_first(texts[1], texts[0]))
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two compilations of a round step; the default suite is at its budget
def test_a_meta_rewarding_step_is_the_plain_round_then_a_judge_update():
  """The responses' half is the plain round's step bit for bit (its loss and rewards); the
  judge's half then moves the policy again, on pairs of the reference's judgements."""
  from rlalign.rewards import judges as judges_lib
  group = 4
  objective = objectives.get("online_dpo")
  roles = {"policy": roles_lib.RoleSpec(MODEL, optax.sgd(0.5)),
           "reference": roles_lib.RoleSpec(MODEL)}
  judge = dataclasses.replace(JUDGE, role="reference")
  term = reward_base.RewardTerm("judge_score", settings=judge, source="judge")
  rl = iteration.RLConfig(batch_size=2 * group, group_size=group, rewards=(term,),
                          sample_from="reference")
  binding = update.Binding(objective, objective.hparams(beta=0.5), roles, {}, 1, 1)
  config = sampler.SamplingConfig(max_new_tokens=8, temperature=1.0, stop_tokens=(TOK.eos_id,))
  actor = iteration.IterationSpec(config, rl, binding, TOK.pad_id)
  judging = sr.judging_spec(actor, judge, META, 4)
  batch, _ = _batch(2)
  batch = {k: v for k, v in batch.items() if not k.startswith("demo")}
  from rlalign.rl import state as state_lib
  policy, reference = tfm.init(MODEL, jax.random.key(0)), tfm.init(MODEL, jax.random.key(1))
  state = lambda: state_lib.init_state({"policy": jax.tree.map(jnp.copy, policy)},
                                       {"policy": optax.sgd(0.5)})
  frozen, rng = {"reference": reference}, jax.random.key(5)
  got, metrics = jax.jit(lambda s: sr.meta_round_step(s, batch, rng, frozen, actor=actor,
                                                      judging=judging, judge=judge, posed=4))(
      state())
  plain, want = jax.jit(lambda s: iteration.rl_step(s, batch, rng, frozen, actor))(state())
  for k in ("loss", "reward/judge", "informative_pairs", "chosen_reward_gap"):
    np.testing.assert_array_equal(metrics[k], want[k])
  assert int(got["step"]) == int(plain["step"]) == 1
  assert "judge/reward/meta_judge" in metrics and "judge/informative_pairs" in metrics
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                      got["roles"]["policy"]["params"], plain["roles"]["policy"]["params"])
  moved = max(jax.tree.leaves(diff))
  assert (moved > 0) == (float(metrics["judge/informative_pairs"]) > 0)
