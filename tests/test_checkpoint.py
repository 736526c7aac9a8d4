"""Tests for rlalign.checkpoint: round trips, shape checks, step management, atomicity."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign.checkpoint import Checkpointer

# Orbax 0.12.8 writes step N into "<N>.orbax-checkpoint-tmp" and renames it to
# "<N>" on finalize (orbax/checkpoint/_src/path/atomicity.py: _get_tmp_directory).
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def make_state(step: int, width: int = 8, seed: int = 0):
  """A training state shaped like the trainer's, with non-trivial values.

  Values come from NumPy (no per-shape XLA compiles, keeping the tests fast);
  the optimizer-state structure comes from optax itself.
  """
  rng = np.random.default_rng(seed)

  def rand(shape, dtype=np.float32):
    return jnp.asarray(rng.standard_normal(shape).astype(dtype))

  params = {
      "embed": rand((16, width)),
      "layers": {"attn": {"q": rand((2, width, 4, width // 2))}},
      "final_norm": rand((width,), jnp.bfloat16),
  }
  adam_state, *rest = optax.adam(1e-3).init(params)
  # Distinct non-zero moments and count: zeros would hide mix-ups.
  adam_state = adam_state._replace(
      count=jnp.int32(step + 1),
      mu=jax.tree.map(lambda p: rand(p.shape, p.dtype), params),
      nu=jax.tree.map(lambda p: rand(p.shape, p.dtype), params),
  )
  return {
      "step": jnp.int32(step),
      "params": params,
      "opt_state": (adam_state, *rest),
      "rng": jax.random.key_data(jax.random.key(seed)),
  }


def abstract(state):
  return jax.eval_shape(lambda: state)


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_round_trip(tmp_path):
  state = make_state(step=10)
  data_state = {"next_index": 1234, "epoch": 2, "shard": "train-00001"}
  with Checkpointer(str(tmp_path), save_every=5) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(10, state, data_state)
  # A fresh Checkpointer, as in a resumed process.
  with Checkpointer(str(tmp_path), save_every=5) as ckpt:
    assert ckpt.latest_step() == 10
    restored, restored_data = ckpt.restore(abstract(state))
  assert_trees_equal(restored, state)
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert int(restored["opt_state"][0].count) == 11
  assert restored_data == data_state


def test_restore_uses_requested_sharding(tmp_path):
  state = make_state(step=1)
  device = jax.devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state
  )
  with Checkpointer(str(tmp_path), save_every=1) as ckpt:
    ckpt.save(1, state, {})
    restored, _ = ckpt.restore(target)
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == sharding


def test_shape_mismatch_names_path_and_shapes(tmp_path):
  with Checkpointer(str(tmp_path), save_every=1) as ckpt:
    ckpt.save(3, make_state(step=3, width=8), {})
    with pytest.raises(ValueError) as info:
      ckpt.restore(abstract(make_state(step=3, width=16)))
  message = str(info.value)
  step_dir = os.path.join(str(tmp_path), "3")
  assert (
      f"checkpoint {step_dir}: params/layers/attn/q: "
      "saved shape (2, 8, 4, 4), expected (2, 16, 4, 8)"
  ) in message
  # Every mismatching array is reported, optimizer moments included.
  assert "opt_state/0/mu/layers/attn/q: saved shape (2, 8, 4, 4)" in message
  assert "params/embed: saved shape (16, 8), expected (16, 16)" in message


def test_structure_mismatch_names_paths(tmp_path):
  state = make_state(step=1)
  with Checkpointer(str(tmp_path), save_every=1) as ckpt:
    ckpt.save(1, state, {})
    extra = dict(state, params=dict(state["params"], value_head=jnp.zeros((8,))))
    with pytest.raises(ValueError, match=r"missing from checkpoint: \[params/value_head\]"):
      ckpt.restore(abstract(extra))
    fewer = {k: v for k, v in state.items() if k != "rng"}
    with pytest.raises(ValueError, match=r"in checkpoint but not expected: \[rng\]"):
      ckpt.restore(abstract(fewer))


def test_latest_step_and_pruning(tmp_path):
  with Checkpointer(str(tmp_path), save_every=2, max_to_keep=2) as ckpt:
    saved = [s for s in range(10) if ckpt.save(s, make_state(s), {"pos": s})]
    assert saved == [0, 2, 4, 6, 8]
    assert ckpt.latest_step() == 8
    assert ckpt.all_steps() == [6, 8]
  assert sorted(os.listdir(tmp_path)) == ["6", "8"]

  with Checkpointer(str(tmp_path), save_every=2, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 8
    with pytest.raises(FileNotFoundError, match="step 4"):
      ckpt.restore(abstract(make_state(4)), step=4)
    restored, data_state = ckpt.restore(abstract(make_state(6)), step=6)
  assert data_state == {"pos": 6}
  assert int(restored["step"]) == 6


def test_should_save_and_force(tmp_path):
  with Checkpointer(str(tmp_path), save_every=4) as ckpt:
    assert [ckpt.should_save(s) for s in (0, 3, 4, 6, 8)] == [True, False, True, False, True]
    assert not ckpt.save(3, make_state(3), {})
    assert ckpt.latest_step() is None and os.listdir(tmp_path) == []
    assert ckpt.save(3, make_state(3), {}, force=True)
    assert ckpt.save(4, make_state(4), {})
    # An existing step is never overwritten, even when forced.
    assert not ckpt.save(4, make_state(4, seed=7), {"pos": 9}, force=True)
    restored, data_state = ckpt.restore(abstract(make_state(4)))
  assert_trees_equal(restored, make_state(4))
  assert data_state == {}


def test_restore_without_checkpoint_raises(tmp_path):
  with Checkpointer(str(tmp_path / "empty"), save_every=1) as ckpt:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ckpt.restore(abstract(make_state(0)))


def test_unfinalized_tmp_dir_is_ignored(tmp_path):
  with Checkpointer(str(tmp_path), save_every=2) as ckpt:
    ckpt.save(2, make_state(2), {"pos": 2})
  # What a crash just before the final rename of a (forced) save at step 5
  # leaves: a complete-looking step, commit marker included, under the tmp name.
  tmp_dir = tmp_path / f"5{TMP_SUFFIX}"
  shutil.copytree(tmp_path / "2", tmp_dir)
  assert (tmp_dir / "commit_success.txt").exists()

  with Checkpointer(str(tmp_path), save_every=2) as ckpt:
    assert ckpt.latest_step() == 2
    assert ckpt.all_steps() == [2]
    _, data_state = ckpt.restore(abstract(make_state(2)))
    assert data_state == {"pos": 2}
    new_state = make_state(4, seed=3)
    assert ckpt.save(4, new_state, {"pos": 4})
    restored, data_state = ckpt.restore(abstract(new_state))
  assert_trees_equal(restored, new_state)
  assert data_state == {"pos": 4}
  # The stale tmp dir was cleaned up, not just skipped.
  assert sorted(os.listdir(tmp_path)) == ["2", "4"]


def test_resave_over_stale_tmp_dir_of_same_step(tmp_path):
  with Checkpointer(str(tmp_path), save_every=2) as ckpt:
    ckpt.save(2, make_state(2), {"pos": 2})
  shutil.copytree(tmp_path / "2", tmp_path / f"4{TMP_SUFFIX}")
  with Checkpointer(str(tmp_path), save_every=2) as ckpt:
    assert ckpt.latest_step() == 2
    new_state = make_state(4, seed=3)
    assert ckpt.save(4, new_state, {"pos": 4})
  with Checkpointer(str(tmp_path), save_every=2) as ckpt:
    restored, data_state = ckpt.restore(abstract(new_state))
  assert_trees_equal(restored, new_state)
  assert data_state == {"pos": 4}


def test_restore_subtree_reads_one_role_into_given_shardings(tmp_path):
  """One role's params out of a multi-role state, e.g. a role's weights from an earlier run."""
  policy, critic = make_state(3, seed=1), make_state(3, width=4, seed=2)
  state = {"step": jnp.int32(3),
           "roles": {"policy": {"params": policy["params"], "opt_state": policy["opt_state"]},
                     "critic": {"params": critic["params"], "opt_state": critic["opt_state"]}}}
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=1)
  ckpt.save(3, state, {"pos": 1})
  device = jax.sharding.SingleDeviceSharding(jax.devices()[1])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract(critic["params"]))
  restored = ckpt.restore_subtree(3, ("roles", "critic", "params"), target)
  assert_trees_equal(restored, critic["params"])
  assert all(x.sharding == device for x in jax.tree.leaves(restored))
  with pytest.raises(ValueError, match=r"no roles/judge in its state; roles holds "
                                       r"\['critic', 'policy'\]"):
    ckpt.restore_subtree(3, ("roles", "judge", "params"), target)
  with pytest.raises(ValueError, match=r"roles/policy/params differs from the expected tree"):
    ckpt.restore_subtree(3, ("roles", "policy", "params"), target)


def test_read_only_leaves_a_save_in_progress_and_refuses_to_save(tmp_path):
  with Checkpointer(str(tmp_path), save_every=2) as ckpt:
    ckpt.save(2, make_state(2), {"pos": 2})
  # Another run saving step 4 right now: its tmp directory must survive a reader.
  shutil.copytree(tmp_path / "2", tmp_path / f"4{TMP_SUFFIX}")
  reader = Checkpointer(str(tmp_path), save_every=1, read_only=True)
  assert reader.latest_step() == 2
  restored, data_state = reader.restore(abstract(make_state(2)))
  assert_trees_equal(restored, make_state(2)) and data_state == {"pos": 2}
  with pytest.raises(RuntimeError, match="read-only"):
    reader.save(6, make_state(6), {"pos": 6}, force=True)
  assert sorted(os.listdir(tmp_path)) == ["2", f"4{TMP_SUFFIX}"]


def _three_steps(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=1, max_to_keep=3)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": jnp.arange(64.0) + step, "step": jnp.int32(step)},
              {"position": step}, force=True)
  return ckpt


def _truncate(path, keep=0.5):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(int(size * keep))


def _truncate_chunks(step_dir):
  """Every array data file (OCDBT's ``d/`` folders) cut in half."""
  for d, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(d) == "d":
      for f in files:
        _truncate(os.path.join(d, f))


# The damage a crash or a full disk leaves in the newest checkpoint, one kind at a time.
DAMAGE = {
    "truncated data chunks": _truncate_chunks,
    "empty state metadata": lambda step_dir: open(os.path.join(step_dir, "state", "_METADATA"),
                                                  "w").close(),
    "truncated iterator state": lambda step_dir: _truncate(os.path.join(step_dir, "data",
                                                                        "metadata")),
    "truncated manifest": lambda step_dir: _truncate(os.path.join(step_dir, "state",
                                                                  "manifest.ocdbt")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, damage, capsys):
  """The newest checkpoint is unreadable: restore warns naming it, moves it aside (kept,
  never deleted) and restores the step before, whose data and iterator state are its own;
  the next save at that step works."""
  ckpt = _three_steps(tmp_path)
  DAMAGE[damage](ckpt.step_dir(3))
  fresh = Checkpointer(str(tmp_path / "ckpt"), save_every=1, max_to_keep=3)
  target = {"w": jax.ShapeDtypeStruct((64,), jnp.float32),
            "step": jax.ShapeDtypeStruct((), jnp.int32)}
  step, state, data = fresh.restore_newest_intact(target)
  assert step == 2 and data == {"position": 2}
  np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(64.0) + 2)
  out = capsys.readouterr().out
  assert f"checkpoint {ckpt.step_dir(3)} is unreadable" in out and "resuming from step 2" in out
  assert os.path.isdir(ckpt.step_dir(3) + ".unreadable")
  assert fresh.latest_step() == 2 and fresh.all_steps() == [1, 2]
  assert fresh.save(3, {"w": jnp.arange(64.0), "step": jnp.int32(3)}, {"position": 3},
                    force=True)
  assert Checkpointer(str(tmp_path / "ckpt"), save_every=1).all_steps() == [1, 2, 3]


def test_no_readable_checkpoint_names_every_one_and_moves_nothing(tmp_path):
  ckpt = _three_steps(tmp_path)
  for step in (1, 2, 3):
    DAMAGE["empty state metadata"](ckpt.step_dir(step))
  target = {"w": jax.ShapeDtypeStruct((64,), jnp.float32),
            "step": jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(ValueError, match="no readable checkpoint") as e:
    Checkpointer(str(tmp_path / "ckpt"), save_every=1).restore_newest_intact(target)
  for step in (1, 2, 3):
    assert ckpt.step_dir(step) in str(e.value)
    assert os.path.isdir(ckpt.step_dir(step))


def test_a_checkpoint_of_another_shape_is_not_damage(tmp_path):
  """A shape mismatch means another run's config: it fails at once, no fallback."""
  from rlalign.checkpoint import CheckpointMismatch
  _three_steps(tmp_path)
  target = {"w": jax.ShapeDtypeStruct((65,), jnp.float32),
            "step": jax.ShapeDtypeStruct((), jnp.int32)}
  with pytest.raises(CheckpointMismatch, match="saved shape"):
    Checkpointer(str(tmp_path / "ckpt"), save_every=1).restore_newest_intact(target)
  assert Checkpointer(str(tmp_path / "ckpt"), save_every=1).all_steps() == [1, 2, 3]


def test_every_read_error_names_the_checkpoint(tmp_path):
  """Damage met by restore or restore_subtree (not the fallback) names the step directory."""
  from rlalign.checkpoint import CheckpointUnreadable
  ckpt = _three_steps(tmp_path)
  DAMAGE["truncated iterator state"](ckpt.step_dir(3))
  DAMAGE["empty state metadata"](ckpt.step_dir(2))
  target = {"w": jax.ShapeDtypeStruct((64,), jnp.float32),
            "step": jax.ShapeDtypeStruct((), jnp.int32)}
  fresh = Checkpointer(str(tmp_path / "ckpt"), save_every=1)
  with pytest.raises(CheckpointUnreadable, match=f"checkpoint {ckpt.step_dir(3)} is unreadable"):
    fresh.restore(target, 3)
  with pytest.raises(CheckpointUnreadable, match=f"checkpoint {ckpt.step_dir(2)}"):
    fresh.restore_subtree(2, ("w",), target["w"])
