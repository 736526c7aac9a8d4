"""The RISE recipe: its checks, the dialogue it trains on, its turn metrics by hand, a run that
logs them, and the same recipe from a tiny random Hugging Face model."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import config as config_lib
from rlalign import recipes
from rlalign.data import addition
from rlalign.data import turns as turns_lib
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer
from rlalign.models import transformer as tfm
from rlalign.recipes import rise
from rlalign.rl import iteration, update
from rlalign.rl import roles as roles_lib
from tests.configs import load_config, typed_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "rise_addition.py") + ":rise,smoke"


def typed(arg, tmp_path, **changes):
  return typed_config("rise_addition", arg, tmp_path, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"phases.rise.advantage": "group_norm"}, "compares samples of one prompt"),
    ({"recipe.judge": "length"}, "recipe.judge 'length' is not one of phases.rise.rewards"),
    ({"recipe.turns": 0}, "recipe.turns must be >= 1"),
    ({"recipe.best_of": 0}, "recipe.best_of must be >= 1"),
    ({"recipe.phase": "warm_start"}, "must train on rollouts"),
    ({"recipe.feedback": ""}, "recipe.feedback must be"),
    ({"data.alphabet": ""}, "data.hidden_fraction writes '\\?'"),
    ({"data.alphabet": "latin"}, "data.alphabet must be"),
    ({"recipe.format_phase": "warm_start"}, "runs after recipe.before"),
    ({"recipe.format_phase": "rise"}, "must train on demonstrations"),
    ({"recipe.format_phase": "chat"}, "recipe.format_phase 'chat' is not in phases"),
])
def test_the_recipe_refuses_runs_it_cannot_make_sense_of(changes, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    typed("rise,smoke", tmp_path, **changes)


def test_hidden_digit_prompts():
  problems = list(addition.generate_problems("train", 400, 3, 0.7, 0, hidden_fraction=0.5))
  plain = list(addition.generate_problems("train", 400, 3, 0.7, 0))
  hidden = [p for p in problems if "?" in p["prompt"]]
  assert 0.4 < len(hidden) / len(problems) < 0.6
  for p in hidden:
    a, b = p["prompt"].rstrip("=").split("+")
    assert b[0] == "?" and "?" not in a + b[1:]
    # The answer is a true sum: one of the ten the hidden digit allows.
    sums = {addition.correct_answer(int(a[::-1]), int((str(d) + b[1:])[::-1])) for d in range(10)}
    assert p["answer"] in sums
  # Without hidden digits nothing changes, draw for draw.
  assert plain == list(addition.generate_problems("train", 400, 3, 0.7, 0, hidden_fraction=0.0))


def test_turn_summary_by_hand():
  # Four rows, three turns; oracle: a row right at a turn stops (later entries False).
  oracle = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], bool)
  no_oracle = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
  got = rise.turn_summary(oracle, no_oracle)
  assert got["eval/turn1_accuracy"] == 0.25
  assert got["eval/turn2_accuracy"] == 0.5
  assert got["eval/turn3_accuracy"] == 0.75
  assert got["eval/turn2_fixed"] == pytest.approx(1 / 3)   # rows 1, 2, 3 wrong; row 1 fixed
  assert got["eval/turn3_fixed"] == 0.5                   # rows 2, 3 still wrong; row 3 fixed
  assert [got[f"eval/turn{k}_accuracy_no_oracle"] for k in (1, 2, 3)] == [0.5, 0.5, 0.25]
  assert got["eval/turn2_broken"] == 0.5                  # rows 0, 2 right; row 0 broken
  assert got["eval/turn3_broken"] == 0.5                  # rows 1, 2 right; row 2 broken


def test_majority_over_turns_by_hand():
  # Answers per turn (3 tokens, -1 past the end) of three rows, and which are right.
  a, b, c = [1, 2, -1], [3, -1, -1], [1, 2, 3]
  answers = jnp.asarray([[a, b, b], [a, b, a], [a, b, c]])
  right = jnp.asarray([[True, False, False], [False, True, True], [False, False, True]])
  got = np.asarray(rise.majority_right(answers, right))
  # Row 0: a; a-b tie -> a (earliest); b twice -> b. Row 1: a; tie -> a; a twice -> a.
  # Row 2: a; tie -> a; all differ -> a.
  np.testing.assert_array_equal(got, [[True, True, False], [False, False, False],
                                      [False, False, False]])


def test_best_rows_takes_the_first_best_of_each_run():
  total = jnp.asarray([0.0, 1.0, 1.0, 0.0,   0.0, 0.0, 0.0, 0.0,   0.2, 0.1, 0.9, 0.3])
  np.testing.assert_array_equal(rise.best_rows(total, 4), [1, 4, 10])


def test_feedback_is_said_as_written_in_raw_prompts(tmp_path):
  tok = CharTokenizer(ASCII_ALPHABET)
  cfg = typed("smoke", tmp_path).data
  assert turns_lib.said_after_answer(tok, cfg, rise.FEEDBACK, (tok.eos_id,)) == tuple(
      tok.encode(rise.FEEDBACK))


TOK = CharTokenizer(ASCII_ALPHABET)
MODEL = tfm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=16, d_ff=64)


def _spec(group_size=1, best_of=2, restate=True):
  from rlalign import objectives
  from rlalign.sampling import sampler
  objective = objectives.get("rwr")
  roles = {"policy": roles_lib.RoleSpec(MODEL)}
  binding = update.Binding(objective, objective.hparams(tau=0.4), roles, {"policy": "policy"},
                           1, 1)
  rl = iteration.RLConfig(batch_size=4 * group_size, group_size=group_size, advantage="none")
  sampling = sampler.SamplingConfig(max_new_tokens=5, temperature=1.0,
                                    stop_tokens=(TOK.eos_id,))
  settings = rise.RISESettings(turns=2, best_of=best_of, restate_prompt=restate)
  return iteration.IterationSpec(sampling, rl, binding, TOK.pad_id), settings


def _batch(prompts, answers, P=10, A=5):
  rows = {"prompt_tokens": [], "prompt_mask": [], "answer_tokens": [], "answer_mask": []}
  for prompt, answer in zip(prompts, answers):
    ids = [TOK.bos_id] + TOK.encode(prompt)
    rows["prompt_tokens"].append([0] * (P - len(ids)) + ids)
    rows["prompt_mask"].append([False] * (P - len(ids)) + [True] * len(ids))
    a = TOK.encode(answer) + [TOK.eos_id]
    rows["answer_tokens"].append(a + [0] * (A - len(a)))
    rows["answer_mask"].append([True] * len(a) + [False] * (A - len(a)))
  return {k: jnp.asarray(v) for k, v in rows.items()}


def test_the_dialogue_continues_only_wrong_rows_with_their_history():
  """A random model's first answers are wrong; the judge here calls the answers of rows 0
  and 2 right, so only rows 1 and 3 take turn 2, from prompt + answer + feedback + prompt.
  Turn 2 keeps, per row, the best of its candidates by a reward that prefers short answers,
  and the training batch stacks both turns with empty completions where a turn was not taken."""
  spec, settings = _spec()
  params = tfm.init(MODEL, jax.random.key(0))
  batch = _batch(["123+456=", "?23+456=", "999+1=", "?0+7="], ["579", "579", "0001", "7"])
  feedback = tuple(TOK.encode(rise.FEEDBACK))
  seen = []

  def judge_scores(rollouts):
    B = rollouts["completion_tokens"].shape[0]
    right = (jnp.arange(B) % 2 == 0) if B == 4 else jnp.zeros((B,), bool)
    length = rollouts["completion_mask"].sum(1).astype(jnp.float32)
    seen.append(B)
    return {"exact_match": right.astype(jnp.float32), "short": -length}, -length

  turns = jax.jit(lambda p, b, r: rise.dialogue(
      p, b["prompt_tokens"], b["prompt_mask"],
      {k: b[k] for k in ("answer_tokens", "answer_mask")}, r, spec, settings, feedback,
      turns=2, best_of=3, judge_scores=judge_scores, bos_id=TOK.bos_id))(
          params, batch, jax.random.PRNGKey(0))
  assert seen == [4, 12]  # turn 1 of 4 rows; turn 2 of 3 candidates each
  (first, _, took1), (second, scores2, took2) = turns
  np.testing.assert_array_equal(took1, True)
  np.testing.assert_array_equal(took2, [False, True, False, True])
  assert not np.asarray(second["completion_mask"])[[0, 2]].any()
  for b in (1, 3):
    prompt = list(np.asarray(batch["prompt_tokens"][b])[np.asarray(batch["prompt_mask"][b])])
    answer = list(np.asarray(first["completion_tokens"][b])[
        np.asarray(first["completion_mask"][b])])
    want = prompt + answer + list(feedback) + prompt[1:]  # the BOS is not said again
    history = np.asarray(second["prompt_tokens"][b])[np.asarray(second["prompt_mask"][b])]
    np.testing.assert_array_equal(history, want)
  rollouts, scores = rise.training_batch(turns, TOK.pad_id)
  assert rollouts["prompt_tokens"].shape == (8, second["prompt_tokens"].shape[1])
  np.testing.assert_array_equal(rollouts["completion_mask"][:4], first["completion_mask"])
  assert not np.asarray(rollouts["completion_mask"])[[4, 6]].any()
  # Turn 1's prompts, left-padded to the longer history, keep their tokens at the end.
  P = batch["prompt_tokens"].shape[1]
  np.testing.assert_array_equal(rollouts["prompt_tokens"][:4, -P:], batch["prompt_tokens"])
  assert scores["exact_match"].shape == (8,)


def test_the_best_of_candidates_is_kept():
  """With a reward that counts a token's occurrences, the kept second answer scores at least
  as well as any candidate sampled from the same history with the same key."""
  spec, settings = _spec(restate=False)
  params = tfm.init(MODEL, jax.random.key(1))
  batch = _batch(["12+34=", "5+6="], ["46", "11"])
  feedback = tuple(TOK.encode("no\n"))
  target = TOK.encode("1")[0]
  totals = []

  def judge_scores(rollouts):
    count = jnp.sum((rollouts["completion_tokens"] == target) & rollouts["completion_mask"],
                    axis=1).astype(jnp.float32)
    totals.append(count)
    return {"exact_match": jnp.zeros_like(count)}, count

  def run(p, b, r):
    out = rise.dialogue(p, b["prompt_tokens"], b["prompt_mask"],
                        {k: b[k] for k in ("answer_tokens", "answer_mask")}, r, spec, settings,
                        feedback, turns=2, best_of=8, judge_scores=judge_scores)
    return out, totals[1]

  turns, candidates = jax.jit(run)(params, batch, jax.random.PRNGKey(3))
  candidates = np.asarray(candidates).reshape(2, 8)
  kept = np.sum((np.asarray(turns[1][0]["completion_tokens"]) == target)
                & np.asarray(turns[1][0]["completion_mask"]), axis=1)
  np.testing.assert_array_equal(kept, candidates.max(axis=1))


def test_a_run_logs_each_turns_accuracy_before_and_after(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=SMOKE)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  final = summary["phases"]["rise"]["eval"]
  start = summary["phases"]["rise"]["eval_at_start"]
  for record in (final, start):
    for k in (1, 2, 3):
      assert 0.0 <= record[f"eval/turn{k}_accuracy"] <= 1.0
      assert 0.0 <= record[f"eval/turn{k}_accuracy_no_oracle"] <= 1.0
      assert 0.0 <= record[f"eval/turn{k}_majority"] <= 1.0
    # One answer is its own majority.
    assert record["eval/turn1_majority"] == record["eval/turn1_accuracy_no_oracle"]
    # With the oracle a right answer stays right: accuracy never falls over turns.
    assert (record["eval/turn1_accuracy"] <= record["eval/turn2_accuracy"]
            <= record["eval/turn3_accuracy"])
    # Turn 1 is the policy's greedy answer, which the runtime's own evaluation also scores.
    assert record["eval/turn1_accuracy"] == pytest.approx(record["eval/pass@1_greedy"])
  assert os.path.getsize(os.path.join(workdir, "rise_turns.png")) > 0
  # The dialogue warm start logs the turns of the model it starts from too.
  assert "eval/turn2_accuracy" in summary["phases"]["dialogue"]["eval_at_start"]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  trained = [r for r in records if "turn2/took" in r]
  assert trained and all(np.isfinite(r["loss"]) for r in trained)
  for r in trained:  # a row takes turn 2 exactly when its first answer was wrong
    np.testing.assert_allclose(r["turn2/took"], 1.0 - r["turn1/accuracy"], atol=1e-6)


@pytest.mark.slow
def test_from_a_hugging_face_checkpoint(tmp_path):
  from tests.rl import test_hf_grpo as hf_test
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  hf_test.write_checkpoint(ckpt, hf_test.write_tokenizer(ckpt))
  config = load_config("rise_addition", f"hf:{ckpt},smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.hidden_fraction = 0.0  # the tiny tokenizer has no "?"
  config.recipe.feedback = "restart"  # nor the letters of the full sentence
  config.mesh.ici = (-1, 1, 1)
  config.phases.rise.batch_size = 32
  cfg = config_lib.from_config_dict(config)
  assert cfg.data.prompt_format == "chat" and not cfg.recipe.settings.restate_prompt
  from rlalign.data.hf_tokenizer import HFTokenizer
  tok = HFTokenizer.from_dir(ckpt)
  ids = turns_lib.said_after_answer(tok, cfg.data, "restart", cfg.sampling.stop_tokens)
  # The user's next turn, after the "<|im_end|>" that the answer's stop token already is.
  assert ids == tuple(tok.encode("\n<|im_start|>user\nrestart<|im_end|>\n"
                                 "<|im_start|>assistant\n"))
  workdir = str(tmp_path / "run")
  summary = recipes.run(cfg, workdir)
  assert "eval/turn2_accuracy" in summary["phases"]["rise"]["eval"]
  from rlalign.models import hf
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(os.path.join(workdir, "hf"))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-4, "the warm start and RISE should have changed the policy"
