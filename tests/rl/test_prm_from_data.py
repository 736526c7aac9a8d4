"""A process reward model trained from a data file's step labels: JSONL -> the TFDS builder ->
the grain pipeline -> the offline prm phase step, and the PRM learns the file's per-step rule."""
import json

import jax
import numpy as np
import optax

from rlalign import objectives
from rlalign.data import pipeline
from rlalign.data.pipeline import DataConfig
from rlalign.data.tokenizer import tokenizer_for
from rlalign.models import transformer as tfm
from rlalign.objectives import base as obj_base, prm
from rlalign.rewards import process
from rlalign.rl import offline, roles as roles_lib, state as state_lib, update

PRM = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64,
           heads=("scalar",))


def write_steps(path, n, seed):
  """Completions of 1-4 digit steps joined by "+"; a step is good when its digit is even
  (a rule the PRM can only learn from the labels)."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      digits = rng.integers(0, 10, size=rng.integers(1, 5))
      f.write(json.dumps({"prompt": f"{rng.integers(10, 99)}=",
                          "completion": "+".join(str(d) for d in digits),
                          "step_labels": [float(d % 2 == 0) for d in digits]}) + "\n")


def test_prm_learns_a_files_step_labels(tmp_path):
  train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
  write_steps(train, 256, 0)
  write_steps(test, 64, 1)
  cfg = DataConfig(task="jsonl", data_dir=str(tmp_path / "tfds"), train_path=str(train),
                   test_path=str(test), max_prompt_len=4, max_answer_len=8, step_delimiter="+")
  tok = tokenizer_for(cfg)
  model = tfm.ModelConfig(vocab_size=tok.vocab_size, **PRM)
  batches = pipeline.train_iterator(cfg, tok, 32, seed=0)
  held_out = pipeline.eval_batches(cfg, tok, "test", 64)[0]
  # The labels sit where the PRM reward reads its steps.
  ends = process.step_ends(held_out["completion_tokens"], held_out["completion_mask"],
                           tok.encode("+")[0])
  np.testing.assert_array_equal(np.asarray(ends), held_out["step_labels"] >= 0)

  optimizer = optax.adam(1e-2)
  roles = {"prm": roles_lib.RoleSpec(model, optimizer)}
  binding = update.Binding(objectives.get("prm"), prm.PRMConfig(), roles, {"model": "prm"})
  step = offline.make_offline_step(offline.OfflineSpec(binding))
  params = tfm.init(model, jax.random.key(0))
  state = state_lib.init_state({"prm": params}, roles_lib.optimizers(roles))

  def held_out_accuracy(params):
    seqs = offline.to_sequences(held_out, "scored")
    scores = update.model_outputs(params, seqs, model, ("step_scores",)).step_scores
    _, metrics = prm.prm_loss(prm.PRMConfig(), {"model": obj_base.ModelOutputs(
        step_scores=scores)}, seqs)
    return float(metrics["step_accuracy"]), float(metrics["label_rate"])

  before, rate = held_out_accuracy(params)
  for _ in range(100):
    state, metrics = step(state, next(batches), jax.random.key(1), {})
  after, _ = held_out_accuracy(state["roles"]["prm"]["params"])
  print(f"held-out step accuracy {before:.3f} -> {after:.3f} (label rate {rate:.3f})")
  assert 0.3 < rate < 0.7
  assert after > max(rate, 1 - rate) + 0.2, (before, after, rate)
