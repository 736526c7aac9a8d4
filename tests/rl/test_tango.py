"""RL Tango: the verifier's tasks from the generator's completions, both updates in one step,
the evaluator's gold step labels and summary, and runs of the config."""
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
from rlalign.recipes import tango
from rlalign.rewards import base as reward_base
from rlalign.rewards import judges, step_verdicts as sv
from rlalign.rl import iteration, update
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.sampling import sampler
from tests.configs import typed_config

TOK = CharTokenizer(ASCII_ALPHABET)
MODEL = tfm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=16, d_ff=64)
STEP = sv.StepVerifierSettings(yes="1", no="0",
                               template=judges.Template(middle="", suffix=" steps? ")
                               ).resolve(TOK)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "tango_addition.py") + ":tango,smoke"


def typed(arg, tmp_path, **changes):
  return typed_config("tango_addition", arg, tmp_path, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"recipe.step_reward": "exact_match"}, "must be a generative_step_verifier"),
    ({"recipe.label_reward": "length"}, "recipe.label_reward 'length' is not one of"),
    ({"recipe.verifier_phase": "warm_start"}, "must train on rollouts"),
    ({"phases.verify.rewards": {"exact_match": 1.0}}, "must be one step_verdicts term"),
    ({"phases.verify.rewards": {"verdict": {"name": "step_verdicts", "yes": "y", "no": "n"}}},
     "differ from phases.generate's steps"),
    ({"phases.generate.rewards.steps.delimiter": ";"}, "delimiter must be ''"),
    ({"phases.generate.rewards.steps.role": "reference"}, "is not the role phases.verify"),
    ({"phases.verify.batch_size": 64, "phases.verify.group_size": 2},
     "poses 32 completions per step"),
    ({"phases.generate.dynamic_sampling": True}, "supports neither"),
    ({"recipe.eval_samples": 0}, "eval_samples must be >= 1"),
    ({"phases.verify.slots": {"policy": "generator"},
      "phases.generate.rewards.steps.role": "generator"}, "train the same role"),
])
def test_the_recipe_refuses_runs_it_cannot_make_sense_of(changes, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    typed("tango,smoke", tmp_path, **changes)


def _rows(texts, width, left=False):
  tokens = np.full((len(texts), width), TOK.pad_id, np.int32)
  mask = np.zeros((len(texts), width), bool)
  for i, ids in enumerate(texts):
    cols = slice(width - len(ids), width) if left else slice(0, len(ids))
    tokens[i, cols], mask[i, cols] = ids, True
  return jnp.asarray(tokens), jnp.asarray(mask)


PROBLEMS = [("123+456=", "579"), ("500+600=", "1100")]
SAMPLES = [["579", "578", "57", "579"], ["1100", "1000", "1100", "11"]]


def _rollouts(problems=PROBLEMS, samples=SAMPLES):
  prompts, answers, completions = [], [], []
  for (prompt, gold), group in zip(problems, samples):
    for text in group:
      prompts.append([TOK.bos_id] + TOK.encode(prompt))
      answers.append(TOK.encode(gold) + [TOK.eos_id])
      completions.append(TOK.encode(text) + [TOK.eos_id])
  pt, pm = _rows(prompts, 10, left=True)
  at, am = _rows(answers, 6)
  ct, cm = _rows(completions, 6)
  return {"prompt_tokens": pt, "prompt_mask": pm, "answer_tokens": at, "answer_mask": am,
          "completion_tokens": ct, "completion_mask": cm}


def _text(tokens, mask):
  return TOK.decode([int(t) for t, m in zip(tokens, mask) if m and t != TOK.eos_id])


def test_the_verifier_is_asked_about_completions_with_the_outcome_once_per_step():
  rollouts = _rollouts()
  right = reward_base.score_in_graph((reward_base.RewardTerm("exact_match"),), rollouts,
                                     {})["exact_match"] > 0.5
  np.testing.assert_array_equal(right, [1, 0, 0, 1, 1, 0, 1, 0])
  for seed in range(5):
    tasks, labels = tango.verifier_tasks(rollouts, right, jax.random.key(seed), 6, STEP,
                                         TOK.eos_id, balanced=True)
    np.testing.assert_array_equal(labels, [1, 0, 1, 0, 1, 0])
    for i in range(6):
      prompt = _text(tasks["prompt_tokens"][i], tasks["prompt_mask"][i])
      question, _, rest = prompt.partition("=")
      answer, _, suffix = rest.partition(" ")
      problem = dict(PROBLEMS)[question + "="]
      assert suffix == "steps? " and (answer == problem) == bool(labels[i])
      target = _text(tasks["answer_tokens"][i], tasks["answer_mask"][i])
      assert target == ("1" if labels[i] else "0") * len(answer)
  # Without balance, a random draw of the rows.
  _, labels = tango.verifier_tasks(rollouts, right, jax.random.key(0), 8, STEP, TOK.eos_id,
                                   balanced=False)
  assert sorted(np.asarray(labels).tolist()) == sorted(np.asarray(right).tolist())


def test_gold_step_labels_compare_each_digit_with_the_gold_answers():
  rollouts = _rollouts()
  steps = sv.steps_of(rollouts, STEP)
  gold = np.asarray(tango.gold_steps(rollouts["completion_tokens"], steps,
                                     rollouts["answer_tokens"]))
  want = {"579": [1, 1, 1], "578": [1, 1, 0], "57": [1, 1], "1100": [1, 1, 1, 1],
          "1000": [1, 0, 1, 1], "11": [1, 1]}
  for row, text in enumerate(t for group in SAMPLES for t in group):
    np.testing.assert_array_equal(gold[row, :len(text)], want[text])
    assert not gold[row, len(text):].any()


def test_the_summary_by_hand():
  rows = {"right": np.array([[1, 0], [0, 0]], bool),
          "worst": np.array([[0.9, 0.2], [0.7, 0.1]]),
          "written_right": np.array([[1, 1], [0, 1]], bool),
          "written_formed": np.array([[1, 1], [1, 0]], bool),
          # Two steps each: said right/right, right/wrong, right/right, wrong/wrong.
          "step_p": np.array([[[0.9, 0.8], [0.6, 0.2]], [[0.7, 0.9], [0.1, 0.4]]]),
          "step_real": np.ones((2, 2, 2), bool),
          "step_gold": np.array([[[1, 1], [1, 0]], [[0, 1], [1, 0]]], bool),
          "near_miss": np.array([[1, 0], [1, 1]], bool),
          "near_miss_localised": np.array([1, 0], bool)}
  got = tango.summary(rows)
  assert got["eval/verifier_accuracy"] == 0.75        # 0.9 passes a right, 0.7 a wrong one
  assert got["eval/verifier_false_positive_rate"] == pytest.approx(1 / 3)
  assert got["eval/verifier_auroc"] == 1.0            # 0.9 above 0.2, 0.7 and 0.1
  assert got["eval/verifier_written_accuracy"] == 0.75
  assert got["eval/verifier_written_well_formed"] == 0.75
  # Steps: said [1,1,1,0,1,1,0,0] against gold [1,1,1,0,0,1,1,0]: 6 of 8 agree; the right
  # steps (5) are said right in 4, the wrong ones (3) said wrong in 2.
  assert got["eval/verifier_step_accuracy"] == 0.75
  assert got["eval/verifier_step_balanced_accuracy"] == pytest.approx(0.5 * (4 / 5 + 2 / 3))
  assert got["eval/near_miss_accuracy"] == 0.75
  assert got["eval/near_miss_localised"] == 0.5


def _specs(monitor: bool, group_size=4):
  objective = objectives.get("grpo")
  sampling = sampler.SamplingConfig(max_new_tokens=6, temperature=1.0,
                                    stop_tokens=(TOK.eos_id,))
  step_term = reward_base.RewardTerm("generative_step_verifier", weight=0.5, settings=STEP,
                                     source="steps")
  label = reward_base.RewardTerm("exact_match")
  gen_rl = iteration.RLConfig(
      batch_size=2 * group_size, group_size=group_size,
      rewards=(label,) if monitor else (label, step_term),
      monitors=(step_term,) if monitor else ())
  hparams = objective.hparams(kl_coef=0.0)
  gen_roles = {"generator": roles_lib.RoleSpec(MODEL, optax.sgd(0.1)),
               "verifier": roles_lib.RoleSpec(MODEL)}
  ver_roles = {"verifier": roles_lib.RoleSpec(MODEL, optax.sgd(0.1))}
  verdict = reward_base.RewardTerm("step_verdicts", settings=sv.StepVerdictSettings(
      yes="1", no="0").resolve(TOK), source="verdict")
  ver_rl = iteration.RLConfig(batch_size=4 * group_size, group_size=group_size,
                              rewards=(verdict,))
  generator = iteration.IterationSpec(sampling, gen_rl, update.Binding(
      objective, hparams, gen_roles, {"policy": "generator"}), TOK.pad_id)
  verifier = iteration.IterationSpec(sampling, ver_rl, update.Binding(
      objective, hparams, ver_roles, {"policy": "verifier"}), TOK.pad_id)
  return generator, verifier


def _state():
  params = {"generator": tfm.init(MODEL, jax.random.key(0)),
            "verifier": tfm.init(MODEL, jax.random.key(1))}
  return state_lib.init_state(params, {k: optax.sgd(0.1) for k in params})


def _batch():
  return {k: v[::4] for k, v in _rollouts().items() if k.startswith(("prompt", "answer"))}


def _tango(generator, verifier, **settings):
  return lambda s, b, r, f: tango.tango_step(
      s, b, r, f, generator=generator, verifier=verifier,
      settings=tango.TangoSettings(**settings), step=STEP, stop_id=TOK.eos_id)


def test_with_the_step_scores_a_monitor_the_generator_is_grpos_bit_for_bit():
  generator, verifier = _specs(monitor=True)
  state, batch, rng = _state(), _batch(), jax.random.key(3)
  got, metrics = jax.device_get(jax.jit(_tango(generator, verifier))(state, batch, rng, {}))
  alone = dataclasses.replace(generator, rl=dataclasses.replace(generator.rl, monitors=()))
  only = {"step": state["step"], "roles": {"generator": state["roles"]["generator"]}}
  want, want_metrics = jax.device_get(jax.jit(
      lambda s, b, r, f: iteration.rl_step(s, b, r, f, alone))(only, batch, rng, {}))
  jax.tree.map(np.testing.assert_array_equal, got["roles"]["generator"],
               want["roles"]["generator"])
  for k in ("loss", "accuracy", "reward", "grad_norm"):
    np.testing.assert_array_equal(metrics[k], want_metrics[k])
  # The verifier trained beside it, on its own tasks: 4 posed completions x 4 verdicts.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got["roles"]["verifier"],
                       jax.device_get(state["roles"]["verifier"]))
  assert max(jax.tree.leaves(moved)) > 0 or float(metrics["verifier/zero_variance_groups"]) == 1
  assert "verifier/reward/verdict" in metrics and int(got["step"]) == 1


@pytest.mark.slow  # two compilations of the step; the default suite is at its budget
def test_a_frozen_verifier_is_not_updated_and_its_step_scores_reach_the_generator():
  generator, verifier = _specs(monitor=False)
  state, batch, rng = _state(), _batch(), jax.random.key(3)
  got, metrics = jax.device_get(jax.jit(_tango(generator, verifier, train_verifier=False))(
      state, batch, rng, {}))
  jax.tree.map(np.testing.assert_array_equal, got["roles"]["verifier"],
               jax.device_get(state["roles"]["verifier"]))
  assert not any(k.startswith("verifier/") for k in metrics)
  assert 0.0 < float(metrics["reward/steps"]) < 1.0   # P(yes) of a random verifier
  # The step scores change the generator's update: without them it is another one.
  alone = dataclasses.replace(generator, rl=dataclasses.replace(
      generator.rl, rewards=generator.rl.rewards[:1]))
  other, _ = jax.device_get(jax.jit(_tango(alone, verifier, train_verifier=False))(
      state, batch, rng, {}))
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got["roles"]["generator"],
                      other["roles"]["generator"])
  assert max(jax.tree.leaves(diff)) > 0


@pytest.mark.slow  # the default suite is at its budget; the kill matrix runs this config too
def test_a_run_logs_both_models_before_and_after(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=SMOKE)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  for record in (summary["phases"]["tango"]["eval_at_start"],
                 summary["phases"]["tango"]["eval"]):
    for key in ("eval/verifier_accuracy", "eval/verifier_written_accuracy",
                "eval/verifier_step_accuracy", "eval/near_miss_accuracy",
                "eval/near_miss_localised", "eval/pass@1_greedy"):
      assert 0.0 <= record[key] <= 1.0, key
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  trained = [r for r in records if "verifier/well_formed" in r]
  assert trained and all(np.isfinite(r["loss"]) and np.isfinite(r["verifier/loss"])
                         for r in trained)
  assert all("reward/steps" in r for r in trained)
  assert os.path.exists(os.path.join(workdir, "curves.png"))


@pytest.mark.slow
def test_from_a_hugging_face_checkpoint(tmp_path):
  """The hf config end to end on a tiny random Qwen2: both roles start from it, the verdicts
  are the tokenizer's own one-token words, and the trained generator is exported."""
  from rlalign import config as config_lib, recipes
  from rlalign.models import hf
  from tests.configs import load_config
  from tests.rl import test_hf_grpo as hf_test
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  hf_test.write_checkpoint(ckpt, hf_test.write_tokenizer(ckpt))
  config = load_config("tango_addition", f"hf:{ckpt},smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  # The tiny tokenizer spells only "useraistnm", digits, "+", "=" and newlines.
  config.phases.generate.rewards.steps.template.suffix = "\nrate"
  config.phases.generate.rewards.steps.update(yes="+", no="=")
  config.phases.verify.rewards.verdict.update(yes="+", no="=")
  config.mesh.ici = (-1, 1, 1)
  config.phases.generate.batch_size = config.phases.verify.batch_size = 32  # 8 prompts
  cfg = config_lib.from_config_dict(config)
  assert cfg.data.prompt_format == "chat"
  workdir = str(tmp_path / "run")
  summary = recipes.run(cfg, workdir)
  assert "eval/near_miss_localised" in summary["phases"]["tango"]["eval"]
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(os.path.join(workdir, "hf_generator"))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-4, "the warm start and RL Tango should have changed the generator"
