"""SPARK: verifier tasks recycled from a group's answers, the update on both, its evaluation."""
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
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer
from rlalign.models import transformer as tfm
from rlalign.recipes import spark, verifier_data
from rlalign.rl import iteration
from rlalign.rl import state as state_lib
from rlalign.sampling import sampler
from tests.configs import typed_config

TOK = CharTokenizer(ASCII_ALPHABET)
MODEL = tfm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=16, d_ff=64)
SETTINGS = spark.SPARKSettings()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "spark_addition.py") + ":spark,smoke"


def typed(arg, tmp_path, **changes):
  return typed_config("spark_addition", arg, tmp_path, **changes)


def ids(settings=SETTINGS):
  data = type("Data", (), {"prompt_format": "raw"})()
  return spark.resolve_ids(settings, TOK, data, (TOK.eos_id,), 5)


@pytest.mark.parametrize("changes, message", [
    ({"recipe.judge": "length"}, "recipe.judge 'length' is not one of phases.spark.rewards"),
    ({"recipe.tasks": ("pointwise", "debate")}, "recipe.tasks must be distinct names"),
    ({"recipe.tasks": ("pointwise", "pointwise")}, "recipe.tasks must be distinct names"),
    ({"recipe.phase": "warm_start"}, "must train on rollouts"),
    ({"recipe.pairwise": ""}, "recipe.pairwise must be non-empty"),
    ({"recipe.eval_samples": 0}, "recipe.eval_samples must be >= 1"),
    ({"phases.spark.group_size": 1, "phases.spark.advantage": "none"},
     "group_size must be >= 2"),
    ({"phases.spark.dynamic_sampling": True}, "dynamic_sampling is not supported"),
    ({"phases.spark.rewards": {"exact_match": 1.0, "length": 0.1},
      "recipe.judge": "length"}, "must be exact_match"),
])
def test_the_recipe_refuses_runs_it_cannot_make_sense_of(changes, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    typed("spark,smoke", tmp_path, **changes)


def test_verdict_words_are_checked_against_the_tokenizer():
  with pytest.raises(ValueError, match="recipe.yes 'Yes indeed' is 10 tokens"):
    ids(dataclasses.replace(SETTINGS, yes="Yes indeed"))
  with pytest.raises(ValueError, match="recipe.first and recipe.second start with the same"):
    ids(dataclasses.replace(SETTINGS, first="one", second="ok"))
  got = ids()
  assert got.yes == tuple(TOK.encode("Yes")) + (TOK.eos_id,)
  assert got.pointwise == tuple(TOK.encode(SETTINGS.pointwise))
  assert got.digits == tuple(TOK.encode("0123456789"))


def _rollouts(prompts, groups, P=10, A=5, N=5):
  """Rollouts of ``groups`` [prompt][sample] answer texts: each ends with EOS, pads after."""
  rows = {k: [] for k in ("prompt_tokens", "prompt_mask", "answer_tokens", "answer_mask",
                          "completion_tokens", "completion_mask")}
  for (prompt, gold), answers in zip(prompts, groups):
    p = [TOK.bos_id] + TOK.encode(prompt)
    a = TOK.encode(gold) + [TOK.eos_id]
    for answer in answers:
      c = TOK.encode(answer) + [TOK.eos_id]
      rows["prompt_tokens"].append([TOK.pad_id] * (P - len(p)) + p)
      rows["prompt_mask"].append([False] * (P - len(p)) + [True] * len(p))
      rows["answer_tokens"].append(a + [TOK.pad_id] * (A - len(a)))
      rows["answer_mask"].append([True] * len(a) + [False] * (A - len(a)))
      rows["completion_tokens"].append(c + [TOK.pad_id] * (N - len(c)))
      rows["completion_mask"].append([True] * len(c) + [False] * (N - len(c)))
  return {k: jnp.asarray(v) for k, v in rows.items()}


def _text(tokens, mask):
  return TOK.decode(np.asarray(tokens)[np.asarray(mask)].tolist(), strict=False)


PROMPTS = [("12+34=", "46"), ("5+5=", "01"), ("7+1=", "8")]
GROUPS = [["46", "45", "47", "46"],   # right, wrong, wrong, right
          ["01", "01", "01", "01"],   # all right
          ["9", "6", "7", "0"]]       # all wrong


def test_tasks_are_recycled_from_the_groups_with_their_labels():
  rollouts = _rollouts(PROMPTS, GROUPS)
  right = np.array([[a == gold for a in g] for (_, gold), g in zip(PROMPTS, GROUPS)])
  task_ids = ids()
  bos = TOK.decode([TOK.bos_id], strict=False)
  eos = TOK.decode([TOK.eos_id], strict=False)
  split = lambda text, tail: next((prompt, gold, text[len(bos + prompt):-len(tail)])
                                  for prompt, gold in PROMPTS if text.startswith(bos + prompt))
  seen = {"pairwise": set()}
  for seed in range(40):
    posed = spark.verifier_tasks(rollouts, jnp.asarray(right.reshape(-1)),
                                 jax.random.key(seed), task_ids, spark.TASKS, 4, TOK.pad_id,
                                 restate_prompt=True)
    # Pointwise: one task per prompt, on answers of the batch, right and wrong in turn while
    # both last (6 right and 6 wrong here: 3 tasks are 2 of one kind and 1 of the other).
    batch, active = posed["pointwise"]
    np.testing.assert_array_equal(active, True)
    labels = []
    for p in range(3):
      text = _text(batch["prompt_tokens"][p], batch["prompt_mask"][p])
      assert text.endswith(SETTINGS.pointwise)
      prompt, gold, answer = split(text, SETTINGS.pointwise)
      assert answer in GROUPS[[q for q, _ in PROMPTS].index(prompt)]
      label = _text(batch["answer_tokens"][p], batch["answer_mask"][p])
      assert label == ("Yes" if answer == gold else "No") + eos
      labels.append(label)
    assert labels[0] == "Yes" + eos and labels[1] == "No" + eos
    # Pairwise: only the mixed group; one right and one wrong answer, the label names the right.
    batch, active = posed["pairwise"]
    np.testing.assert_array_equal(active, [True, False, False])
    text = _text(batch["prompt_tokens"][0], batch["prompt_mask"][0])
    one, two = text[len(bos + "12+34="):-len(SETTINGS.pairwise)].split(SETTINGS.pair_between)
    assert sorted([one == "46", two == "46"]) == [False, True]
    label = _text(batch["answer_tokens"][0], batch["answer_mask"][0])[0]
    assert label == ("1" if one == "46" else "2")
    seen["pairwise"].add(label)
    # Reflection: wrong answers of the whole batch (6 of them, 3 tasks), then the question
    # again without its BOS; the label is that prompt's gold answer.
    batch, active = posed["reflection"]
    np.testing.assert_array_equal(active, True)
    for p in range(3):
      text = _text(batch["prompt_tokens"][p], batch["prompt_mask"][p])
      prompt, gold, body = next((q, g, text[len(bos + q):]) for q, g in PROMPTS
                                if text.startswith(bos + q))
      assert body.endswith(SETTINGS.reflection + prompt)
      wrong = body[:-len(SETTINGS.reflection + prompt)]
      assert wrong in GROUPS[[q for q, _ in PROMPTS].index(prompt)] and wrong != gold
      assert _text(batch["answer_tokens"][p], batch["answer_mask"][p]) == gold + eos
  assert seen == {"pairwise": {"1", "2"}}


def test_balanced_rows_alternate_while_both_kinds_last():
  right = jnp.asarray([True, True, True, True, True, False, True, True])
  for seed in range(10):
    rows = np.asarray(verifier_data.balanced_rows(right, jax.random.key(seed), 6))
    assert len(set(rows.tolist())) == 6
    np.testing.assert_array_equal(np.asarray(right)[rows], [1, 0, 1, 1, 1, 1])
  # Reflection's rows: no wrong answer, no task posed.
  posed = spark.verifier_tasks(_rollouts(PROMPTS[1:2], GROUPS[1:2]), jnp.ones((4,), bool),
                               jax.random.key(0), ids(), ("reflection",), 4, TOK.pad_id)
  np.testing.assert_array_equal(posed["reflection"][1], False)


def test_the_near_miss_changes_one_digit():
  rollouts = _rollouts(PROMPTS, [["0"]] * 3)
  answers = rollouts["answer_tokens"]
  real = rollouts["answer_mask"] & (answers != TOK.eos_id)
  for seed in range(10):
    miss, where = verifier_data.near_miss(answers, real, ids().digits, jax.random.key(seed))
    miss = np.asarray(miss)
    changed = miss != np.asarray(answers)
    np.testing.assert_array_equal(changed.sum(axis=1), 1)
    np.testing.assert_array_equal(np.argmax(changed, axis=1), where)
    assert not (changed & ~np.asarray(real)).any()
    assert set(TOK.decode(miss[changed].tolist())) <= set("0123456789")


def test_the_summary_by_hand():
  rows = {"right": np.array([[1, 0, 0], [0, 0, 0]], bool),
          "p_yes": np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1]]),
          "reflected_right": np.array([[0, 1, 0], [1, 0, 0]], bool),
          "near_miss_pointwise": np.array([[1, 0], [1, 1]], bool),
          "near_miss_pairwise": np.array([1, 0], bool)}
  got = spark.self_summary(rows)
  assert got["eval/self_pass@1"] == pytest.approx(1 / 6)
  assert got["eval/self_pass@3"] == 0.5
  assert got["eval/self_best_of_3"] == 0.5          # row 0 picks sample 0 (right)
  # Judged wrong (p <= 0.5) and replaced by the reflection: row 0 sample 1 becomes right,
  # row 1 sample 0 becomes right; row 0 sample 2 and row 1 sample 1 are kept (wrong).
  assert got["eval/self_corrected"] == pytest.approx(3 / 6)
  assert got["eval/self_reflection_fixes"] == pytest.approx(2 / 5)
  # Verdicts p > 0.5: passes samples (0,0) right, (0,2) and (1,1) wrong.
  assert got["eval/self_verify_false_positive_rate"] == pytest.approx(2 / 5)
  assert got["eval/self_verify_true_positive_rate"] == 1.0
  assert got["eval/near_miss_pointwise_accuracy"] == 0.75
  assert got["eval/near_miss_pairwise_accuracy"] == 0.5


def _spec(tasks=spark.TASKS, group_size=4):
  objective = objectives.get("grpo")
  spec = iteration.single_policy_spec(
      MODEL, sampler.SamplingConfig(max_new_tokens=5, temperature=1.0,
                                    stop_tokens=(TOK.eos_id,)),
      iteration.RLConfig(batch_size=3 * group_size, group_size=group_size, minibatches=1),
      objective, objective.hparams(kl_coef=0.0), optax.sgd(0.1))
  return spec, dataclasses.replace(SETTINGS, tasks=tasks)


def _step_inputs(spec):
  params = tfm.init(MODEL, jax.random.key(0))
  batch = {k: v[::spec.rl.group_size] for k, v in _rollouts(PROMPTS, GROUPS).items()
           if k.startswith(("prompt", "answer"))}
  frozen = {"reference": tfm.init(MODEL, jax.random.key(1))}
  return state_lib.init_state({"policy": params}, spec.optimizers), batch, frozen


def test_without_tasks_the_step_is_grpos_bit_for_bit():
  spec, settings = _spec(tasks=())
  state, batch, frozen = _step_inputs(spec)
  rng = jax.random.key(3)
  run = lambda fn: jax.device_get(jax.jit(fn)(state, batch, rng, frozen))
  got, got_metrics = run(lambda s, b, r, f: spark.spark_step(s, b, r, f, spec=spec,
                                                             settings=settings, ids=ids()))
  want, want_metrics = run(lambda s, b, r, f: iteration.rl_step(s, b, r, f, spec))
  jax.tree.map(np.testing.assert_array_equal, got, want)
  for k in ("loss", "accuracy", "reward", "grad_norm"):
    np.testing.assert_array_equal(got_metrics[k], want_metrics[k])


def test_the_update_learns_on_the_tasks_posed_and_only_those():
  """The update's batch is the answers and three task batches of the same size; the tasks'
  responses count as tokens where posed. A random model's answers are all wrong here, so only
  reflection and pointwise pose tasks: pairwise carries no token."""
  spec, settings = _spec()
  state, batch, frozen = _step_inputs(spec)
  rng = jax.random.key(3)
  seen = {}
  real_learn = iteration.learn

  def learn(state, rollouts, scores, rng, frozen, learner):
    seen["learner"] = learner
    state, metrics = real_learn(state, rollouts, scores, rng, frozen, learner)
    return state, {**metrics, "informative": rollouts["informative"]}

  iteration.learn = learn
  try:
    _, metrics = jax.jit(lambda s, b, r, f: spark.spark_step(s, b, r, f, spec=spec,
                                                             settings=settings, ids=ids()))(
        state, batch, rng, frozen)
  finally:
    iteration.learn = real_learn
  rows = spec.rl.batch_size
  assert seen["learner"].rl.batch_size == 4 * rows
  assert seen["learner"].binding.minibatches == 4 * spec.binding.minibatches
  informative = np.asarray(metrics["informative"]).reshape(4, rows)
  assert informative[0].all() and informative[1].all()   # answers; pointwise
  assert not informative[2].any()                       # pairwise: no group has both
  assert informative[3].all()                           # reflection: every group is wrong
  assert float(metrics["pairwise/posed"]) == 0.0 and float(metrics["reflection/posed"]) == 1.0
  assert float(metrics["pointwise/label_yes"]) == 0.0
  assert float(metrics["accuracy"]) == 0.0


def test_a_run_logs_the_self_verification_before_and_after(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=SMOKE)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  for record in (summary["phases"]["spark"]["eval_at_start"],
                 summary["phases"]["spark"]["eval"]):
    for key in ("eval/self_pass@1", "eval/self_best_of_4", "eval/self_corrected",
                "eval/near_miss_pointwise_accuracy", "eval/near_miss_pairwise_accuracy",
                "eval/self_verify_accuracy"):
      assert 0.0 <= record[key] <= 1.0, key
    # Best of 4 by any rule lies between the samples' mean and any of them being right.
    assert record["eval/self_best_of_4"] <= record["eval/self_pass@4"]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  trained = [r for r in records if "pointwise/posed" in r]
  assert trained and all(r["pointwise/posed"] == 1.0 and np.isfinite(r["loss"])
                         for r in trained)


@pytest.mark.slow
def test_from_a_hugging_face_checkpoint(tmp_path):
  """The hf config end to end on a tiny random Qwen2 with a chat template: each task's
  question is the user's next turn after the answer, and the trained policy is exported."""
  from rlalign import config as config_lib, recipes
  from rlalign.data import turns as turns_lib
  from rlalign.data.hf_tokenizer import HFTokenizer
  from rlalign.models import hf
  from tests.configs import load_config
  from tests.rl import test_hf_grpo as hf_test
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  hf_test.write_checkpoint(ckpt, hf_test.write_tokenizer(ckpt))
  config = load_config("spark_addition", f"hf:{ckpt},smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  # The tiny tokenizer spells only "useraistnm", digits, "+", "=" and newlines.
  config.recipe.update(yes="sure", no="nein", pointwise="true", pair_between="or",
                       pairwise="mine", reflection="retry")
  config.mesh.ici = (-1, 1, 1)
  config.phases.spark.batch_size = 32
  cfg = config_lib.from_config_dict(config)
  assert cfg.data.prompt_format == "chat" and not cfg.recipe.settings.restate_prompt
  tok = HFTokenizer.from_dir(ckpt)
  task_ids = spark.resolve_ids(cfg.recipe.settings, tok, cfg.data, cfg.sampling.stop_tokens,
                               cfg.sampling.max_new_tokens)
  assert task_ids.pointwise == tuple(tok.encode("\n<|im_start|>user\ntrue<|im_end|>\n"
                                                "<|im_start|>assistant\n"))
  assert task_ids.yes == tuple(tok.encode("sure")) + tuple(cfg.sampling.stop_tokens[:1])
  assert task_ids.pointwise == turns_lib.said_after_answer(tok, cfg.data, "true",
                                                           cfg.sampling.stop_tokens)
  workdir = str(tmp_path / "run")
  summary = recipes.run(cfg, workdir)
  assert "eval/self_best_of_4" in summary["phases"]["spark"]["eval"]
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(os.path.join(workdir, "hf"))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-4, "the warm start and SPARK should have changed the policy"
