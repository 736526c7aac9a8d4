"""Learned rewards against transformers on the same weights: a reward model imported from a
``*ForSequenceClassification`` checkpoint, an ensemble of two families, and a generative
verifier (P(Yes) from one forward pass, and a score read from its greedy judgement)."""
import jax
import jax.numpy as jnp
import numpy as np

from rlalign.rewards import judges, learned
from rlalign.rewards.base import RoleModel

from hf_zoo import VOCAB, torch

EOS = 2
TOL = 1e-4


def rollouts(seed=0):
  """Left-padded prompts and right-padded completions that end in EOS (row 0 never stops)."""
  rng = np.random.default_rng(seed)
  prompts = rng.integers(3, VOCAB, size=(3, 6)).astype(np.int32)
  prompt_mask = np.ones_like(prompts, bool)
  prompt_mask[1, :2] = prompt_mask[2, :4] = False
  prompts[~prompt_mask] = 0
  completions = rng.integers(3, VOCAB, size=(3, 5)).astype(np.int32)
  completion_mask = np.ones_like(completions, bool)
  for row, length in ((1, 3), (2, 1)):
    completions[row, length] = EOS
    completions[row, length + 1:] = 0
    completion_mask[row, length + 1:] = False
  return {"prompt_tokens": prompts, "prompt_mask": prompt_mask, "completion_tokens": completions,
          "completion_mask": completion_mask}


def real(r, row, drop_stop):
  prompt = r["prompt_tokens"][row][r["prompt_mask"][row]]
  completion = r["completion_tokens"][row][r["completion_mask"][row]]
  if drop_stop:
    completion = completion[completion != EOS]
  return prompt, completion


def hf_sequence_score(model, ids):
  with torch.no_grad():
    return float(model(input_ids=torch.tensor(ids[None], dtype=torch.long)).logits[0, 0])


def test_reward_model_and_ensemble_match_sequence_classification(zoo):
  r = rollouts()
  llama, qwen = zoo.get("llama", "scalar"), zoo.get("qwen2", "scalar")
  roles = {"llama_rm": RoleModel(llama.cfg, llama.params), "qwen_rm": RoleModel(qwen.cfg,
                                                                                 qwen.params)}
  ours = np.asarray(jax.jit(lambda r: learned.reward_model(
      r, roles, learned.RewardModelSettings(role="llama_rm")))(r))
  settings = learned.EnsembleSettings(roles=("llama_rm", "qwen_rm"), aggregate="mean_minus_std",
                                      std_coef=2.0)
  ensemble = np.asarray(learned.reward_ensemble(r, roles, settings))
  theirs = {name: np.array([hf_sequence_score(b.model, np.concatenate(real(r, row, False)))
                            for row in range(3)])
            for name, b in (("llama", llama), ("qwen", qwen))}
  np.testing.assert_allclose(ours, theirs["llama"], atol=TOL)
  k = np.stack([theirs["llama"], theirs["qwen"]])
  np.testing.assert_allclose(ensemble, k.mean(0) - 2.0 * k.std(0), atol=2 * TOL)


def test_generative_verifier_matches_transformers_next_token_probabilities(zoo):
  b = zoo.get("llama")
  r = rollouts(1)
  template = judges.Template(prefix_ids=(1, 5), middle_ids=(7, 8), suffix_ids=(9, 10, 11),
                             suffix="?", stop_ids=(EOS,))
  settings = judges.VerifierSettings(role="verifier", template=template, yes_id=20, no_id=30)
  ours = np.asarray(judges.generative_verifier(r, {"verifier": RoleModel(b.cfg, b.params)},
                                               settings))
  for row in range(3):
    prompt, completion = real(r, row, True)
    ids = np.concatenate([[1, 5], prompt, [7, 8], completion, [9, 10, 11]])
    with torch.no_grad():
      p = torch.softmax(b.model(input_ids=torch.tensor(ids[None])).logits[0, -1], -1).numpy()
    np.testing.assert_allclose(ours[row], p[20] / (p[20] + p[30]), atol=TOL)
  assert np.ptp(ours) > 1e-3


def test_judge_score_reads_the_digit_after_the_marker_in_greedy_generate(zoo):
  b = zoo.get("llama")
  r = rollouts(2)
  template = judges.Template(middle_ids=(7,), suffix_ids=(9, 10), suffix="?", stop_ids=(EOS,))
  # HF's greedy judgements of each row, then a marker and digits taken from what it wrote, so
  # the parse has something to find: row 0's third token is the marker, its fourth a digit.
  written = []
  for row in range(3):
    prompt, completion = real(r, row, True)
    ids = np.concatenate([prompt, [7], completion, [9, 10]])
    with torch.no_grad():
      out = b.model.generate(torch.tensor(ids[None]), max_new_tokens=8, do_sample=False,
                             eos_token_id=EOS, pad_token_id=0)
    written.append(out[0, len(ids):].numpy())
  marker, digit = int(written[0][2]), int(written[0][3])
  digits = tuple([digit] + [t for t in range(40, 60) if t != digit][:9])
  digits = digits[7:] + digits[:7]  # the found digit stands for 3
  settings = judges.JudgeScoreSettings(role="verifier", template=template, max_new_tokens=8,
                                       marker_ids=(marker,), digit_ids=digits, max_score=9,
                                       fallback=-1.0, parse="graph")
  ours = np.asarray(judges.judge_score(r, {"verifier": RoleModel(b.cfg, b.params)}, settings))

  def parse(tokens):  # the same rule, on the host
    for i, t in enumerate(tokens[:-1]):
      if t == marker:
        return digits.index(tokens[i + 1]) / 9 if tokens[i + 1] in digits else -1.0
      if t == EOS:
        break
    return -1.0
  expected = [parse(list(w)) for w in written]
  assert expected[0] == 3 / 9
  np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_multi_label_classifier_is_an_ensemble_of_heads(tmp_path):
  """A 3-label *ForSequenceClassification checkpoint imports as one model with 3 scalar
  heads; the ensemble over them matches transformers' three logits, and it exports back."""
  import transformers
  from rlalign.models import hf
  from hf_zoo import hf_config, randomize_
  torch.manual_seed(3)
  model = transformers.AutoModelForSequenceClassification.from_config(
      hf_config("llama", num_labels=3), attn_implementation="eager")
  randomize_(model, 3, 2.0)
  model.eval()
  path = str(tmp_path / "rm3")
  model.save_pretrained(path, safe_serialization=True)
  cfg, params = hf.load_hf_checkpoint(path)
  assert cfg.scalar_heads == 3 and params["scalar_head"]["w"].shape == (cfg.d_model, 3)
  r = rollouts(4)
  with torch.no_grad():
    theirs = np.stack([model(input_ids=torch.tensor(np.concatenate(real(r, row, False))[None],
                                                    dtype=torch.long)).logits[0].numpy()
                       for row in range(3)])  # [B, 3]
  roles = {"rm": RoleModel(cfg, params)}
  for aggregate in ("mean", "min", "mean_minus_std"):
    settings = learned.EnsembleSettings(roles=("rm",), aggregate=aggregate, std_coef=0.5)
    ours = np.asarray(jax.jit(lambda r: learned.reward_ensemble(r, roles, settings))(r))
    expected = {"mean": theirs.mean(1), "min": theirs.min(1),
                "mean_minus_std": theirs.mean(1) - 0.5 * theirs.std(1)}[aggregate]
    np.testing.assert_allclose(ours, expected, atol=2 * TOL)
  one = learned.reward_model(r, roles, learned.RewardModelSettings(role="rm", head=2))
  np.testing.assert_allclose(np.asarray(one), theirs[:, 2], atol=TOL)
  assert np.ptp(theirs[0]) > 1e-2  # the heads really differ
  out = hf.save_hf_checkpoint(params, cfg, str(tmp_path / "rm3_out"), hf_config_template=path)
  again = transformers.AutoModelForSequenceClassification.from_pretrained(out)
  assert again.config.num_labels == 3
  for name, value in model.state_dict().items():
    assert torch.equal(value, again.state_dict()[name]), name
