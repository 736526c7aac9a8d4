"""Faults inside a run, in-process: non-finite updates are skipped and counted, a diverged
run stops without checkpointing NaN, and a preemption signal saves the current step.

The CLI's side of the same faults (exit codes, summary.json, resuming) is in
``tests/rl/test_fault_injection.py``.
"""
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import checkpoint as ckpt_lib
from rlalign import metrics as metrics_lib
from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.rl import phases, preemption
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update

MODEL = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                        head_dim=16, d_ff=64)


def sft_setup(epochs=1, minibatches=1):
  objective = objectives.get("sft")
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=1e-2))
  binding = update.Binding(objective, objective.hparams(),
                           {"policy": roles_lib.RoleSpec(MODEL, optimizer)}, {},
                           epochs=epochs, minibatches=minibatches)
  state = state_lib.init_state({"policy": tfm.init(MODEL, jax.random.key(0))},
                               {"policy": optimizer})
  rng = np.random.default_rng(0)
  B, P, T = 4, 3, 5
  data = {"prompt_tokens": jnp.asarray(rng.integers(3, 16, (B, P)), jnp.int32),
          "prompt_mask": jnp.ones((B, P), bool),
          "completion_tokens": jnp.asarray(rng.integers(3, 16, (B, T)), jnp.int32),
          "mask": jnp.ones((B, T), bool)}
  step = jax.jit(lambda s, d, r: update.updates(s, d, r, {}, binding))
  return state, data, step


def poison(params):
  """The params with one NaN in the embedding: the loss and every gradient go NaN."""
  embed = params["embed"]
  return {**params, "embed": embed.at[3, 0].set(jnp.nan)}


def test_a_finite_update_is_applied_and_counts_no_skip():
  state, data, step = sft_setup()
  new, metrics = step(state, data, jax.random.key(1))
  assert int(metrics["skipped_updates"]) == 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new["roles"]["policy"]["params"],
                       state["roles"]["policy"]["params"])
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (2, 2)])
def test_a_nonfinite_update_leaves_the_state_as_it_was(epochs, minibatches):
  """A NaN gradient (from a NaN param the batch reads) skips every update of the step: params
  and Adam moments and count are bit-identical to before, and each skip is counted."""
  state, data, step = sft_setup(epochs, minibatches)
  role = state["roles"]["policy"]
  bad = {**state, "roles": {"policy": {**role, "params": poison(role["params"])}}}
  before = jax.tree.map(np.asarray, bad)
  new, metrics = step(bad, data, jax.random.key(1))
  assert int(metrics["skipped_updates"]) == epochs * minibatches
  assert not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, new))


class _Data:
  """A data iterator with grain's get_state / set_state."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return {"x": np.float32(self.position)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def make_phase(step_fn, num_steps=6, max_consecutive_skips=0):
  return phases.Phase("p", step_fn, num_steps=num_steps, step_offset=0, log_every=1,
                      max_consecutive_skips=max_consecutive_skips)


def scalar_state(value=0.0):
  return {"step": jnp.zeros((), jnp.int32), "roles": {"r": {"params": {"w": jnp.float32(value)},
                                                            "opt_state": ()}}}


def add_step(skip_from=None, nan_from=None):
  """A step adding the batch's x to w; from ``skip_from`` on it reports a skipped update
  (and keeps w), from ``nan_from`` on it writes NaN into w without reporting one."""
  def step(state, batch, rng, frozen):
    n = int(state["step"]) + 1
    w = state["roles"]["r"]["params"]["w"]
    skipped = skip_from is not None and n >= skip_from
    if not skipped:
      w = w + batch["x"]
    if nan_from is not None and n >= nan_from:
      w = jnp.float32(jnp.nan)
    new = {"step": jnp.int32(n), "roles": {"r": {"params": {"w": w}, "opt_state": ()}}}
    return new, {"tokens": 1.0, "loss": float("nan") if skipped else 0.0,
                 "skipped_updates": float(skipped)}
  return step


def run(phase, tmp_path, state=None):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), save_every=2)
  writer = metrics_lib.MetricsWriter(str(tmp_path), resume_step=-1)
  try:
    return phases.run_phase(phase, state or scalar_state(), _Data(), jax.random.key(0), {},
                            checkpointer, writer), checkpointer
  finally:
    writer.close()


def test_consecutive_skips_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
  """Steps 3, 4, 5 skip: the third in a row stops the run, naming the steps and the limit;
  the newest checkpoint is step 4's (a skipped step leaves the state as it was, so saving it
  is safe), and its w is the last good sum 1+2."""
  with pytest.raises(phases.NonFiniteError, match=r"steps 3\.\.5 .*max_consecutive_skips=3"):
    run(make_phase(add_step(skip_from=3), max_consecutive_skips=3), tmp_path)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), save_every=2, read_only=True)
  assert checkpointer.latest_step() == 4
  restored, data = checkpointer.restore(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                   phases.checkpoint_tree(scalar_state(), jax.random.key(0), None)))
  assert float(restored["roles"]["r"]["params"]["w"]) == 3.0
  records = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["skipped_updates"] for r in records] == [0, 0, 1, 1, 1]


def test_skips_that_recover_do_not_stop_the_run(tmp_path):
  """A skip now and then is counted and logged, never fatal."""
  calls = []

  def sometimes(state, batch, rng, frozen):
    new, metrics = add_step()(state, batch, rng, frozen)
    calls.append(1)
    return new, {**metrics, "skipped_updates": float(len(calls) % 2 == 0)}

  state, _ = run(make_phase(sometimes, max_consecutive_skips=2), tmp_path)
  assert int(state["step"]) == 6


def test_a_nonfinite_state_is_never_checkpointed(tmp_path):
  """NaN that got into the state by another path (no skip reported) is refused at the save,
  naming the leaf; the checkpoint before it stays the newest."""
  with pytest.raises(phases.NonFiniteError, match=r"step 4.*\['roles'\]\['r'\]\['params'\]"
                                                  r"\['w'\].*step 2\) is intact"):
    run(make_phase(add_step(nan_from=3)), tmp_path)
  saved = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), save_every=2, read_only=True)
  assert saved.latest_step() == 2


def test_a_preemption_signal_saves_the_current_step_and_stops(tmp_path):
  """SIGTERM (delivered for real, to this process) during step 3: the step finishes, is
  saved although 3 is no multiple of save_every, and the loop raises Preempted; rerunning
  resumes at step 3 and ends where an uninterrupted loop ends."""
  sent = []

  def step(state, batch, rng, frozen):
    if int(state["step"]) == 2 and not sent:
      sent.append(1)
      signal.raise_signal(signal.SIGTERM)  # the handler only raises the flag
    return add_step()(state, batch, rng, frozen)

  with preemption.handle_signals():
    with pytest.raises(preemption.Preempted, match="SIGTERM after step 3 of phase 'p'"):
      run(make_phase(step), tmp_path)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), save_every=2)
  assert checkpointer.latest_step() == 3
  # Resume as the runtime does, and finish.
  data = _Data()
  state, rng, _ = phases.resume(checkpointer, scalar_state(), data, jax.random.key(0))
  assert int(state["step"]) == 3 and data.position == 3
  writer = metrics_lib.MetricsWriter(str(tmp_path), resume_step=3)
  with preemption.handle_signals():
    state = phases.run_phase(make_phase(add_step()), state, data, rng, {}, checkpointer, writer)
  writer.close()
  assert float(state["roles"]["r"]["params"]["w"]) == sum(range(1, 7))
  steps = [r["step"] for r in metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_a_second_signal_stops_at_once():
  """Ctrl-C twice: the second one is not deferred."""
  with preemption.handle_signals():
    signal.raise_signal(signal.SIGINT)
    assert preemption.received() == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is preemption._handle
    # The handler itself, not a delivered signal: Python may run a delivered signal's handler
    # inside a garbage-collection callback, which swallows the KeyboardInterrupt.
    with pytest.raises(KeyboardInterrupt):
      preemption._handle(signal.SIGINT, None)
  assert preemption.received() is None


def test_a_skip_logged_under_a_role_counts_too(tmp_path):
  """A recipe logs each role's skips as <role>/skipped_updates; those stop the run alike."""
  def verifier_skips(state, batch, rng, frozen):
    new, metrics = add_step()(state, batch, rng, frozen)
    return new, {"tokens": 1.0, "skipped_updates": 0.0, "verifier/skipped_updates": 1.0}

  with pytest.raises(phases.NonFiniteError, match=r"steps 1\.\.2 "):
    run(make_phase(verifier_skips, max_consecutive_skips=2), tmp_path)


def test_evaluations_follow_eval_every_whatever_the_log_cadence(tmp_path):
  """eval_every=3 with log_every=2 over 8 steps: logs at 2, 4, 6, 8 and, for the
  evaluations, 3 and 6; the evaluation at 6, 3 and the last step 8 (a cadence that does not
  divide by the log's once evaluated only where both met)."""
  evaluated = []

  def evaluate(state):
    evaluated.append(int(state["step"]))
    return {"eval/w": float(state["roles"]["r"]["params"]["w"])}

  phase = phases.Phase("p", add_step(), num_steps=8, step_offset=0, log_every=2,
                       eval_every=3, evaluate=evaluate)
  run(phase, tmp_path)
  assert evaluated == [3, 6, 8]
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [2, 3, 4, 6, 8]
  assert [r["step"] for r in records if "eval/w" in r] == [3, 6, 8]
