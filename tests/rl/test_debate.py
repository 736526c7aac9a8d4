"""Multiagent debate: the consensus, the critics' prompts and every role's rows by hand, the
step's updates against SFT on those rows, labels out of the step's reach, the agents'
divergence against the sampler's own log-probs, the recipe's refusals, and runs."""
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
from rlalign.recipes import debate
from rlalign.rl import offline, update
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.sampling import sampler
from tests.configs import load_config, typed_config

TOK = CharTokenizer(ASCII_ALPHABET)
MODEL = tfm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=16, d_ff=64)
SAMPLING = sampler.SamplingConfig(max_new_tokens=4, temperature=1.0, stop_tokens=(TOK.eos_id,))
ids = lambda text: tuple(TOK.encode(text))


def spec_for(agents, critics, rounds=2, bos_id=None):
  models = {r: MODEL for r in dict.fromkeys(agents + critics)}
  return debate.DebateSpec(agents=agents, critics=critics, rounds=rounds, models=models,
                           sampling=SAMPLING, pad_id=TOK.pad_id, separator_ids=ids(","),
                           before_question_ids=ids("|"), stop_ids=(TOK.eos_id,),
                           bos_id=bos_id)


def answers(texts, width=4):
  """[N, B, width] tokens and masks of answers written as text ("+" marks no stop)."""
  N, B = len(texts), len(texts[0])
  tokens = np.full((N, B, width), TOK.pad_id, np.int32)
  mask = np.zeros((N, B, width), bool)
  for n in range(N):
    for b in range(B):
      text = texts[n][b]
      row = TOK.encode(text.rstrip("+")) + ([] if text.endswith("+") else [TOK.eos_id])
      tokens[n, b, :len(row)], mask[n, b, :len(row)] = row, True
  return jnp.asarray(tokens), jnp.asarray(mask)


def prompts(texts):
  width = max(len(t) for t in texts)
  tokens = np.full((len(texts), width), TOK.pad_id, np.int32)
  mask = np.zeros((len(texts), width), bool)
  for i, t in enumerate(texts):
    tokens[i, width - len(t):], mask[i, width - len(t):] = TOK.encode(t), True
  return jnp.asarray(tokens), jnp.asarray(mask)


def round_of(texts, prompt=None, after=None, spec=None):
  """A debate round answered ``texts`` [N][B]: the generation round after ``prompt``, or,
  ``after`` a round, the critics' (their prompts quote it)."""
  tokens, mask = answers(texts)
  N, B = tokens.shape[:2]
  p, pm = prompt if prompt is not None else prompts(["1+2="] * B)
  if after is None:
    tile = lambda x: jnp.broadcast_to(x[None], (N,) + x.shape)
    p, pm = tile(p), tile(pm)
  else:
    asked = [debate.critic_input(p, pm, after, n, spec) for n in range(N)]
    p, pm = jnp.stack([a[0] for a in asked]), jnp.stack([a[1] for a in asked])
  return debate.Round(p, pm, tokens, mask, jnp.zeros(tokens.shape, jnp.float32))


def test_the_consensus_is_the_most_voted_answer_and_a_tie_the_first_agents():
  tokens, mask = answers([["12", "7", "5", "31"], ["13", "8", "5", "31"], ["12", "9", "6", "31+"]])
  keys = debate.answer_keys(tokens, mask)
  agreed, pick, votes = jax.device_get(debate.consensus(keys))
  np.testing.assert_array_equal(pick, [0, 0, 0, 0])
  # Prompt 1's three answers tie: no consensus. "31" unstopped is another answer than "31".
  np.testing.assert_array_equal(votes, [2, 0, 2, 2])
  assert TOK.decode([t for t in agreed[0] if t >= 0]) == "12"
  np.testing.assert_array_equal(jax.device_get(debate.agrees(keys, agreed))[:, 0],
                                [True, False, True])
  np.testing.assert_allclose(jax.device_get(debate.distinct_share(keys)), [0.5, 1.0, 0.5, 0.5])
  tokens, mask = answers([["4"], ["5"], ["5"]])
  _, pick, votes = debate.consensus(debate.answer_keys(tokens, mask))
  assert int(pick[0]) == 1 and int(votes[0]) == 2
  # Two answers with two votes each are no consensus; one with three of four is.
  tokens, mask = answers([["4", "4"], ["5", "4"], ["4", "4"], ["5", "7"]])
  _, pick, votes = debate.consensus(debate.answer_keys(tokens, mask))
  np.testing.assert_array_equal(jax.device_get(votes), [0, 3])
  np.testing.assert_array_equal(jax.device_get(pick), [0, 0])


def test_a_critic_reads_the_answers_its_counterparts_first_then_the_question():
  spec = spec_for(debate.AGENTS, debate.CRITICS)
  p, pm = prompts(["740+580=", "1+2="])
  previous = round_of([["231", "3"], ["221+", "4"], ["231", "3"]], (p, pm))
  for n, want in ((0, ["231,221,231|740+580=", "3,4,3|1+2="]),
                  (1, ["221,231,231|740+580=", "4,3,3|1+2="])):
    tokens, mask = jax.device_get(debate.critic_input(p, pm, previous, n, spec))
    assert [TOK.decode(t[m]) for t, m in zip(tokens, mask)] == want
    assert mask[:, -1].all()  # left-packed: the question ends every row
  # A prompt's BOS stays first; a prompt without one gets none.
  bos = jnp.concatenate([jnp.full((2, 1), TOK.bos_id), p], axis=1)
  bos_mask = jnp.concatenate([jnp.asarray([[False], [True]]), pm], axis=1)
  tokens, mask = jax.device_get(debate.critic_input(
      bos, bos_mask, previous, 2, spec_for(debate.AGENTS, debate.CRITICS, bos_id=TOK.bos_id)))
  real = tokens[1][mask[1]]
  assert real[0] == TOK.bos_id and TOK.decode(real[1:]) == "3,3,4|1+2="
  assert TOK.decode(tokens[0][mask[0]]) == "231,231,221|740+580="


def test_each_critic_round_reads_the_round_before_it():
  spec = spec_for(debate.AGENTS[:2] + ("agent_0",), ("critic_0",) * 3, rounds=3)
  params = {"agent_0": tfm.init(MODEL, jax.random.key(0)),
            "agent_1": tfm.init(MODEL, jax.random.key(1)),
            "critic_0": tfm.init(MODEL, jax.random.key(2))}
  p, pm = prompts(["12+30=", "5+5="])
  rounds = jax.device_get(jax.jit(lambda prm, t, m: debate.debate(
      prm, t, m, jax.random.key(3), spec))(params, p, pm))
  assert len(rounds) == 3 and rounds[2].tokens.shape == (3, 2, SAMPLING.max_new_tokens)
  # A random model samples ids the tokenizer does not spell: read them as it reads them.
  text = lambda ids: TOK.decode(ids, strict=False)
  said = lambda r, n, b: text([t for t, m in zip(r.tokens[n, b], r.mask[n, b])
                               if m and t != TOK.eos_id])
  for m in (1, 2):
    for n in range(3):
      for b, question in enumerate(["12+30=", "5+5="]):
        quoted = ",".join(said(rounds[m - 1], (n + k) % 3, b) for k in range(3))
        got = text(rounds[m].prompt_tokens[n, b][rounds[m].prompt_mask[n, b]])
        assert got == f"{quoted}|{question}", (m, n, b)


def test_every_role_learns_its_own_part_that_agrees_with_the_consensus():
  spec = spec_for(debate.AGENTS, debate.CRITICS)
  first = round_of([["12", "7", "5"], ["13", "8", "6"], ["12", "9", "5"]])
  # Critics: consensus "12" (2 votes), "8" (1 vote: not settled), "5" (3 votes).
  second = round_of([["12", "7", "5"], ["12", "8", "5"], ["14", "3", "5"]], after=first,
                    spec=spec)
  rows, counts = debate.training_rows([first, second], spec, jax.random.key(0), 1.0, 2)
  kept = {role: np.asarray(r["mask"]).any(axis=1) for role, r in rows.items()}
  np.testing.assert_array_equal(kept["agent_0"], [True, False, True])
  np.testing.assert_array_equal(kept["agent_1"], [False, False, False])
  np.testing.assert_array_equal(kept["agent_2"], [True, False, True])
  np.testing.assert_array_equal(kept["critic_0"], [True, False, True])   # kept agreeing ones
  np.testing.assert_array_equal(kept["critic_1"], [True, False, True])   # corrected both
  np.testing.assert_array_equal(kept["critic_2"], [False, False, True])
  # A critic learns its own answer after its own prompt; the stop token is learned too.
  c1 = rows["critic_1"]
  row = np.asarray(c1["completion_tokens"][0])[np.asarray(c1["mask"][0])]
  assert TOK.decode(row[:-1]) == "12" and row[-1] == TOK.eos_id
  assert TOK.decode(np.asarray(c1["prompt_tokens"][0])[np.asarray(c1["prompt_mask"][0])]) == \
      "13,12,12|1+2="
  # Corrected: critic_1 on prompts 0 (13 -> 12) and 2 (6 -> 5); kept: critic_0 on 0 and 2,
  # critic_2 on 2; of 3 critics x 3 prompts.
  assert float(counts["rows/critic_corrected"]) == pytest.approx(2 / 9)
  assert float(counts["rows/critic_kept"]) == pytest.approx(3 / 9)
  assert float(counts["agreement/settled"]) == pytest.approx(2 / 3)
  # Without kept rows only the corrections stay.
  rows, _ = debate.training_rows([first, second], spec, jax.random.key(0), 0.0, 2)
  assert not np.asarray(rows["critic_0"]["mask"]).any()
  assert np.asarray(rows["critic_1"]["mask"]).any(axis=1).tolist() == [True, False, True]
  # Even with one vote enough, prompt 1's critics (7, 8, 3) tie: no consensus.
  rows, _ = debate.training_rows([first, second], spec, jax.random.key(0), 1.0, 1)
  assert np.asarray(rows["agent_0"]["mask"]).any(axis=1).tolist() == [True, False, True]


def test_one_model_playing_every_part_learns_all_their_rows_at_once():
  spec = spec_for(("policy",) * 3, ("policy",) * 3)
  first = round_of([["12", "7"], ["13", "8"], ["12", "9"]])
  second = round_of([["12", "7"], ["12", "8"], ["14", "8"]], after=first, spec=spec)
  rows, _ = debate.training_rows([first, second], spec, jax.random.key(0), 1.0, 2)
  (role,) = rows
  kept = np.asarray(rows[role]["mask"]).any(axis=1)
  # 3 generation parts then 3 critic parts, 2 prompts each; the prompts left-padded to the
  # critics' (longer) width.
  assert kept.tolist() == [True, False, False, True, True, False,
                           True, False, True, True, False, True]
  assert rows[role]["prompt_tokens"].shape[1] == second.prompt_tokens.shape[2]


def _setup(agents, critics, min_votes=1, same_start=False):
  """A step over the parts' roles. ``same_start``: every role starts from one init and samples
  greedily, so every part gives one answer and every row agrees with the consensus."""
  spec = spec_for(agents, critics)
  if same_start:
    spec = dataclasses.replace(spec, sampling=dataclasses.replace(SAMPLING, temperature=0.0))
  names = tuple(dict.fromkeys(agents + critics))
  sft = objectives.get("sft")
  specs = {r: roles_lib.RoleSpec(MODEL, optax.adam(1e-2)) for r in names}
  learners = {r: offline.OfflineSpec(update.Binding(sft, sft.hparams(), specs, {"policy": r}))
              for r in names}
  params = {r: tfm.init(MODEL, jax.random.key(0 if same_start else i))
            for i, r in enumerate(names)}
  state = state_lib.init_state(params, {r: specs[r].optimizer for r in names})
  p, pm = prompts(["12+30=", "5+5=", "7+1=", "99+1="])
  batch = {"prompt_tokens": p, "prompt_mask": pm,
           "answer_tokens": jnp.asarray(np.tile(TOK.encode("42"), (4, 1))),
           "answer_mask": jnp.ones((4, 2), bool),
           "demo_tokens": jnp.asarray(np.tile(TOK.encode("41"), (4, 1))),
           "demo_mask": jnp.ones((4, 2), bool)}
  step = jax.jit(lambda s, b, r: debate.debate_step(s, b, r, {}, spec=spec, learners=learners,
                                                    kept_share=1.0, min_votes=min_votes))
  return spec, learners, state, batch, step


def test_each_roles_update_is_sft_on_its_own_rows_and_no_label_reaches_the_step():
  spec, learners, state, batch, step = _setup(debate.AGENTS[:2] + ("agent_0",),
                                              ("critic_0",) * 3, same_start=True)
  rng = jax.random.key(3)
  got, metrics = jax.device_get(step(state, batch, rng))
  # The same debate by hand (the step's keys), then SFT of each role on its rows alone.
  @jax.jit
  def by_hand(state, batch):
    keys = jax.random.split(jax.random.fold_in(rng, 0), 3)
    params = {r: state["roles"][r]["params"] for r in learners}
    rounds = debate.debate(params, batch["prompt_tokens"], batch["prompt_mask"], keys[0], spec)
    rows, _ = debate.training_rows(rounds, spec, keys[1], 1.0, 1)
    out, tokens = {}, {}
    for i, (role, learner) in enumerate(learners.items()):
      own = {"step": state["step"], "roles": {role: state["roles"][role]}}
      out[role] = offline.learn(own, rows[role], jax.random.fold_in(keys[2], i), {},
                                learner)[0]["roles"][role]
      tokens[role] = rows[role]["mask"].sum()
    return out, tokens, rows["agent_0"]["mask"].shape[0]
  want, tokens, agent_0_rows = jax.device_get(by_hand(state, batch))
  assert agent_0_rows == 8   # agent_0 plays two generation parts
  # Greedy copies of one model: the critics agree (their prompts quote the same answers), and
  # the agents, whose prompt is another, do not agree with them. A role with rows takes SFT
  # on them alone; a role without any does not move.
  assert tokens["critic_0"] > 0 and tokens["agent_0"] == tokens["agent_1"] == 0
  for role in learners:
    expected = want[role] if tokens[role] else jax.device_get(state["roles"][role])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got["roles"][role], expected)
    assert float(metrics[f"{role}/updated"]) == float(tokens[role] > 0)
  assert int(got["step"]) == 1 and float(metrics["agreement/settled"]) == 1.0
  # Other answers and demonstrations: the same step, bit for bit.
  relabelled = {**batch, "answer_tokens": batch["answer_tokens"][:, ::-1] + 1,
                "demo_tokens": batch["demo_tokens"] * 0 + 5}
  again, again_metrics = jax.device_get(step(state, relabelled, rng))
  jax.tree.map(np.testing.assert_array_equal, again, got)
  jax.tree.map(np.testing.assert_array_equal, again_metrics, metrics)


@pytest.mark.slow  # another compilation of the step; the default suite is at its budget
def test_a_role_with_no_row_does_not_move():
  # Three random models' answers never all agree: with three votes needed, no row is kept.
  _, learners, state, batch, step = _setup(debate.AGENTS, debate.CRITICS, min_votes=3)
  got, metrics = jax.device_get(step(state, batch, jax.random.key(3)))
  assert float(metrics["agreement/settled"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, got["roles"], jax.device_get(state["roles"]))
  assert all(float(metrics[f"{r}/updated"]) == 0.0 for r in learners)


def test_the_agents_divergence_reads_the_samplers_log_probs():
  params = tfm.init(MODEL, jax.random.key(0))
  other = tfm.init(MODEL, jax.random.key(1))
  p, pm = prompts(["12+30=", "5+5=", "7+1="])
  s = jax.jit(lambda p_, t, m: sampler.sample(p_, t, m, jax.random.key(2), MODEL, SAMPLING,
                                              TOK.pad_id))(params, p, pm)
  own = jnp.sum(jnp.where(s.mask, s.logprobs, 0.0), axis=1)
  np.testing.assert_allclose(debate.sequence_logprob(params, MODEL, p, pm, s.tokens, s.mask),
                             own, rtol=1e-4, atol=1e-4)
  # By hand: the other model's log-probs of the answer of one row, unpadded, in one pass.
  row = 1
  prompt = list(np.asarray(p[row])[np.asarray(pm[row])])
  answer = [int(t) for t, m in zip(np.asarray(s.tokens[row]), np.asarray(s.mask[row])) if m]
  logp = tfm.token_logprobs(other, jnp.asarray([prompt + answer]),
                            jnp.ones((1, len(prompt) + len(answer)), bool), MODEL)
  want = float(jnp.sum(logp[0, len(prompt) - 1:]))
  got = debate.sequence_logprob(other, MODEL, p, pm, s.tokens, s.mask)
  assert float(got[row]) == pytest.approx(want, abs=1e-4)


def test_the_summary_by_hand():
  right = np.zeros((2, 3, 2), bool)          # [B, N, M]
  right[0, :, 0] = [True, False, False]      # row 0: one right, then all right
  right[0, :, 1] = True
  right[1, :, 0] = [True, True, False]       # row 1: two right, then one broken
  right[1, :, 1] = [True, False, False]
  rows = {"right": right, "majority": np.array([[False, True], [True, False]]),
          "diversity": np.array([[1.0, 0.0], [0.5, 0.5]]),
          "greedy": np.array([[True, False, True], [True, True, True]]),
          "kl": np.array([[0.5] * 6, [1.5] * 6])}
  out = debate.summarize(rows, 3)
  assert out["eval/debate_accuracy"] == 0.5
  assert out["eval/round1_accuracy"] == pytest.approx(3 / 6)
  assert out["eval/round2_accuracy"] == pytest.approx(4 / 6)
  assert out["eval/round1_majority"] == 0.5 and out["eval/round2_majority"] == 0.5
  assert out["eval/agent1_accuracy"] == 0.5 and out["eval/agent1_greedy"] == 0.5
  assert out["eval/answer_diversity"] == 0.75 and out["eval/final_diversity"] == 0.25
  assert out["eval/agent_kl"] == 1.0
  assert out["eval/critic_fixed"] == pytest.approx(2 / 3)   # 3 wrong first, 2 fixed
  assert out["eval/critic_broken"] == pytest.approx(1 / 3)  # 3 right first, 1 broken


def typed(arg, tmp_path, **changes):
  return typed_config("debate_addition", arg, tmp_path, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"recipe.rounds": ()}, "recipe.rounds must name"),
    ({"recipe.rounds": ("round_1", "round_9")}, "recipe.rounds names \\['round_9'\\]"),
    ({"phases.round_2.objective": {"name": "grpo"}}, "phases.round_2 fine-tunes on the debate"),
    ({"recipe.agents": ("agent_0",), "recipe.critics": ("critic_0",)}, "at least 2 agents"),
    ({"recipe.critics": ("critic_0", "critic_1")}, "one per agent \\(3\\)"),
    ({"recipe.debate_rounds": 1}, "rounds after the first are the critics'"),
    ({"recipe.agents": ("agent_0", "agent_1", "judge")}, "agent role 'judge' is not in roles"),
    ({"roles.critic_2.trainable": False}, "agent role 'critic_2' is frozen"),
    ({"recipe.min_votes": 4}, "min_votes must be in \\[1, 3\\]"),
    ({"recipe.kept_share": 1.5}, "kept_share must be in \\[0, 1\\]"),
    ({"recipe.gold": "no_such_reward"}, "recipe.gold 'no_such_reward'"),
    ({"recipe.before_question": ""}, "could not tell one answer"),
    ({"roles.agent_1.export_hf": True}, "roles.agent_1.export_hf: its weights come from no"),
    ({"recipe.gold": "exact_match_text"}, "must be an in-graph sequence reward"),
    ({"recipe.rounds": ("round_1", "round_1", "round_3")}, "phases \\['round_1'\\] appear twice"),
    ({"recipe.format_phase": "warm_start"}, "phases \\['warm_start'\\] appear twice"),
])
def test_the_recipe_refuses_runs_it_cannot_make_sense_of(changes, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    typed("multiagent,smoke", tmp_path, **changes)


def test_the_arms_differ_only_in_who_plays_the_parts(tmp_path):
  arms = {arm: typed(f"{arm},smoke", tmp_path) for arm in ("multiagent", "single", "majority",
                                                          "adapters")}
  assert arms["multiagent"].recipe.settings.roles == debate.AGENTS + debate.CRITICS
  assert arms["single"].recipe.settings.roles == ("policy",)
  assert arms["majority"].recipe.settings.critics == ()
  assert arms["adapters"].role_configs["critic_1"].adapter.lora_rank == 8
  phases = {arm: {n: dataclasses.replace(p, slots=()) for n, p in cfg.phases}
            for arm, cfg in arms.items()}
  assert phases["multiagent"] == phases["single"] == phases["majority"]


@pytest.mark.slow  # the default suite is at its budget
def test_a_run_logs_the_debate_before_and_after_and_plots_it(tmp_path, cli):
  workdir = tmp_path / "run"
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cli.run_main(str(workdir), f"--config.data.data_dir={tmp_path / 'tfds'}",
               config=os.path.join(repo, "configs", "debate_addition.py") + ":multiagent,smoke")
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  evals = [r for r in records if "eval/debate_accuracy" in r]
  assert len(evals) >= 2 and evals[0]["step"] < evals[-1]["step"]
  assert any("round_1/critic_2/loss" in r for r in records)
  assert (workdir / "debate.png").stat().st_size > 0
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["params"]) >= set(debate.AGENTS + debate.CRITICS)


@pytest.mark.slow
def test_from_a_hugging_face_checkpoint(tmp_path):
  """The hf config end to end on a tiny random Qwen2 whose tokenizer spells printable ASCII:
  the prompts go through its chat template, every agent starts from it, and agent_0 is
  exported."""
  import string
  from rlalign import config as config_lib
  from rlalign import recipes
  from rlalign.models import hf
  from tests.rl import test_hf_grpo as hf_test
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
  hf_test.write_checkpoint(ckpt, hf_test.write_tokenizer(ckpt, chars))
  config = load_config("debate_addition", f"hf:{ckpt},smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.mesh.ici = (-1, 1, 1)
  cfg = config_lib.from_config_dict(config)
  assert cfg.data.prompt_format == "chat"
  workdir = str(tmp_path / "run")
  summary = recipes.run(cfg, workdir)
  assert "eval/debate_accuracy" in summary["phases"]["round_3"]["eval"]
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(os.path.join(workdir, "hf_agent_0"))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-4
