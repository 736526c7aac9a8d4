"""Tests for rlalign.parallel.logical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from rlalign.parallel import logical

RULES = (("batch", "data"), ("embed", None), ("mlp", "model"), ("heads", "model"),
         ("length", None))


def test_logical_to_spec_maps_names_by_rules():
  assert logical.logical_to_spec(("batch", "length", "embed"), RULES) == PartitionSpec(
      "data", None, None)
  assert logical.logical_to_spec(("embed", "mlp"), RULES) == PartitionSpec(None, "model")
  assert logical.logical_to_spec((None, "batch"), RULES) == PartitionSpec(None, "data")
  assert logical.logical_to_spec((), RULES) == PartitionSpec()


def test_mesh_axis_shards_only_the_first_dimension_naming_it():
  assert logical.logical_to_spec(("mlp", "heads"), RULES) == PartitionSpec("model", None)
  assert logical.logical_to_spec(("batch", "mlp", "batch"), RULES) == PartitionSpec(
      "data", "model", None)


def test_uncovered_name_raises_naming_it():
  with pytest.raises(KeyError) as e:
    logical.logical_to_spec(("batch", "vocab"), RULES)
  assert "'vocab'" in str(e.value)


def test_constrain_is_identity_without_rules():
  x = jnp.arange(6.0).reshape(2, 3)
  assert logical.constrain(x, ("batch", "embed")) is x
  # Without rules nothing is checked, not even the rank or unknown names.
  assert logical.constrain(x, ("nope",)) is x
  out = jax.jit(lambda a: logical.constrain(a, ("batch", "embed")) * 2)(x)
  np.testing.assert_array_equal(np.asarray(out), np.arange(6.0).reshape(2, 3) * 2)


def _constraint_lines(fn, x):
  # A fresh wrapper each time: jit's trace cache does not see the active rules, so a
  # function traced outside the block would otherwise be reused inside it.
  text = jax.jit(lambda a: fn(a)).lower(x).as_text()
  return [line for line in text.splitlines() if "sharding_constraint" in line]


def test_constrain_under_rules_on_a_one_device_mesh():
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  x = jnp.arange(6.0).reshape(2, 3)
  fn = lambda a: logical.constrain(a, ("batch", "mlp")) + 1
  assert _constraint_lines(fn, x) == []  # no rules: nothing in the program
  with logical.axis_rules(mesh, RULES):
    with pytest.raises(ValueError, match="rank 2"):
      logical.constrain(x, ("batch",))
    with pytest.raises(KeyError, match="'vocab'"):
      logical.constrain(x, ("batch", "vocab"))
    lines = _constraint_lines(fn, x)
    out = jax.jit(lambda a: fn(a))(x)
    # ("embed", None): a rule mapping to None leaves the dimension unsharded.
    lines_embed = _constraint_lines(lambda a: logical.constrain(a, ("embed", "batch")), x)
  assert len(lines) == 1 and '[{"data"}, {"model"}]' in lines[0], lines
  assert len(lines_embed) == 1 and '[{}, {"data"}]' in lines_embed[0], lines_embed
  np.testing.assert_array_equal(np.asarray(out), np.arange(6.0).reshape(2, 3) + 1)
  # The rules are gone after the block.
  assert logical.constrain(x, ("batch",)) is x
  assert _constraint_lines(fn, x) == []
