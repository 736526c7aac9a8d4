"""Tests for rlalign.rewards.host_pool: host rewards in workers that cannot hang or crash a run."""
from __future__ import annotations

import logging
import multiprocessing
import os
import time

import numpy as np
import pytest

from tests.rewards import faulty_rewards  # noqa: F401  (registers the host_pool_test_* rewards)
from rlalign.rewards import base
from rlalign.rewards.host_pool import HostRewardPool, HostRewardSettings

FALLBACK = -1.0  # distinct from every real score below
LOGGER = "rlalign.rewards.host_pool"


def _terms(*names):
  return [base.RewardTerm(name) for name in names]


def _batch(completions, answers=None):
  completions = list(completions)
  answers = list(answers) if answers is not None else [c[::-1] for c in completions]
  return [f"prompt {i}" for i in range(len(completions))], completions, answers


def _metric(metrics, name, kind):
  return metrics[f"host_reward/{name}/{kind}"]


def _workers(other=()):
  """This process's live host-reward workers, less the pids in ``other``."""
  return [p for p in multiprocessing.active_children()
          if p.name.startswith("host-reward") and p.pid not in other]


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


@pytest.fixture(scope="module")
def pool():
  """Shared: 20-row batches go out as 5 chunks over 2 workers. Tests that kill workers leave
  it healed, which the tests after them rely on too."""
  with HostRewardPool(HostRewardSettings(workers=2, timeout_s=1.0, fallback=FALLBACK,
                                         chunk_size=4)) as p:
    p.start(wait=True)
    yield p


def _mixed_batch(rows=20):
  # Every third row matches its answer (modulo whitespace); lengths vary.
  completions = [f" {i} " if i % 3 == 0 else "x" * i for i in range(rows)]
  answers = [str(i) for i in range(rows)]
  return _batch(completions, answers)


def test_scores_match_inline_score_host(pool):
  batch = _mixed_batch()
  terms = _terms("exact_match_text", "exact_match", "host_pool_test_length") + [
      base.RewardTerm("host_pool_test_length", source="length_again")]
  scores, metrics = pool.score(terms, *batch)
  want = base.score_host(terms, *batch)
  assert set(scores) == set(want) == {"exact_match_text", "host_pool_test_length",
                                      "length_again"}
  for name in want:
    assert scores[name].dtype == np.float32
    np.testing.assert_array_equal(scores[name], want[name])
    for kind in ("errors", "timeouts", "nonfinite"):
      assert _metric(metrics, name, kind) == 0.0
  assert scores["exact_match_text"].sum() == 7  # rows 0, 3, ..., 18
  assert metrics["host_reward/seconds"] > 0


def test_hung_reward_times_out_and_its_workers_are_replaced():
  settings = HostRewardSettings(workers=2, timeout_s=0.75, fallback=FALLBACK)
  others = {p.pid for p in _workers()}  # the shared pool's, if it is up
  pool = HostRewardPool(settings)
  pool.start(wait=True)  # so the timing below is the reward's, not the workers' start
  hung_pids = [p.pid for p in _workers(others)]
  assert len(hung_pids) == 2
  batch = _mixed_batch(10)

  begin = time.monotonic()
  scores, metrics = pool.score(_terms("host_pool_test_sleep_forever"), *batch)
  elapsed = time.monotonic() - begin
  # Bounded, not timed: a loaded machine may be slow, but the call must not wait forever.
  assert settings.timeout_s <= elapsed < settings.timeout_s + 60.0
  np.testing.assert_array_equal(scores["host_pool_test_sleep_forever"], [FALLBACK] * 10)
  assert _metric(metrics, "host_pool_test_sleep_forever", "timeouts") == 10.0
  assert _metric(metrics, "host_pool_test_sleep_forever", "errors") == 0.0
  assert not any(_alive(pid) for pid in hung_pids)

  scores, metrics = pool.score(_terms("exact_match_text"), *batch)
  np.testing.assert_array_equal(scores["exact_match_text"],
                                base.score_host(_terms("exact_match_text"), *batch)
                                ["exact_match_text"])
  assert _metric(metrics, "exact_match_text", "timeouts") == 0.0
  fresh_pids = [p.pid for p in _workers(others)]
  assert len(fresh_pids) == 2 and not set(fresh_pids) & set(hung_pids)

  pool.close()
  assert not _workers(others)
  assert not any(_alive(pid) for pid in fresh_pids)
  pool.close()  # idempotent
  with pytest.raises(RuntimeError, match="closed"):
    pool.score(_terms("exact_match_text"), *batch)


def test_only_the_hung_chunk_falls_back(pool):
  completions = ["a", "bb", "ccc", "dddd", "e", "hang", "g", "h", "i", "jj", "k", "l"]
  scores, metrics = pool.score(_terms("host_pool_test_hang_on_word"), *_batch(completions))
  want = [float(len(c)) for c in completions]
  want[4:8] = [FALLBACK] * 4  # the chunk holding "hang"
  np.testing.assert_array_equal(scores["host_pool_test_hang_on_word"], want)
  assert _metric(metrics, "host_pool_test_hang_on_word", "timeouts") == 4.0


def test_raising_reward_falls_back_and_warns_once(pool, caplog):
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    scores, metrics = pool.score(_terms("host_pool_test_raises", "host_pool_test_length"),
                                 *_mixed_batch())
  np.testing.assert_array_equal(scores["host_pool_test_raises"], [FALLBACK] * 20)
  assert _metric(metrics, "host_pool_test_raises", "errors") == 20.0
  assert _metric(metrics, "host_pool_test_length", "errors") == 0.0
  np.testing.assert_array_equal(scores["host_pool_test_length"],
                                [float(len(c)) for c in _mixed_batch()[1]])
  warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
  assert len(warnings) == 1, warnings  # five failing chunks, one line
  assert "'host_pool_test_raises'" in warnings[0]
  assert "ValueError: boom: the verifier broke" in warnings[0]


def test_nonfinite_rows_fall_back(pool, caplog):
  completions = ["a", "nan", "ccc", "inf", "ee", "f", "nan", "hhh"]
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    scores, metrics = pool.score(_terms("host_pool_test_nonfinite"), *_batch(completions))
  np.testing.assert_array_equal(scores["host_pool_test_nonfinite"],
                                [1, FALLBACK, 3, FALLBACK, 2, 1, FALLBACK, 3])
  assert _metric(metrics, "host_pool_test_nonfinite", "nonfinite") == 3.0
  assert _metric(metrics, "host_pool_test_nonfinite", "errors") == 0.0
  assert any("non-finite" in r.getMessage() for r in caplog.records if r.name == LOGGER)


@pytest.mark.parametrize("name,message", [("host_pool_test_wrong_shape", "shape (5,)"),
                                          ("host_pool_test_wrong_type", "ValueError")])
def test_wrong_shape_or_type_is_an_error(pool, caplog, name, message):
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    scores, metrics = pool.score(_terms(name), *_batch(["a", "b", "c", "d", "e", "f"]))
  np.testing.assert_array_equal(scores[name], [FALLBACK] * 6)
  assert _metric(metrics, name, "errors") == 6.0
  assert _metric(metrics, name, "nonfinite") == 0.0
  assert any(message in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_reward_that_kills_its_worker_is_an_error(pool, caplog):
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    scores, metrics = pool.score(_terms("host_pool_test_exits"), *_batch(["a", "b", "c"]))
  np.testing.assert_array_equal(scores["host_pool_test_exits"], [FALLBACK] * 3)
  assert _metric(metrics, "host_pool_test_exits", "errors") == 3.0
  assert any("exited with code 3" in r.getMessage() for r in caplog.records if r.name == LOGGER)
  # The worker was replaced.
  scores, _ = pool.score(_terms("host_pool_test_length"), *_batch(["abc"]))
  np.testing.assert_array_equal(scores["host_pool_test_length"], [3.0])


def test_inline_mode_matches_and_still_falls_back():
  batch = _mixed_batch()
  terms = _terms("exact_match_text", "host_pool_test_length")
  before = {p.pid for p in _workers()}
  with HostRewardPool(HostRewardSettings(workers=0, fallback=FALLBACK)) as pool:
    scores, metrics = pool.score(terms + _terms("host_pool_test_raises",
                                                "host_pool_test_nonfinite"), *batch)
    assert {p.pid for p in _workers()} == before  # nothing started
  want = base.score_host(terms, *batch)
  for name in want:
    np.testing.assert_array_equal(scores[name], want[name])
  np.testing.assert_array_equal(scores["host_pool_test_raises"], [FALLBACK] * 20)
  assert _metric(metrics, "host_pool_test_raises", "errors") == 20.0
  assert _metric(metrics, "host_pool_test_nonfinite", "nonfinite") == 0.0


def test_workers_start_lazily_and_only_for_host_terms():
  before = {p.pid for p in _workers()}
  with HostRewardPool(HostRewardSettings(workers=2)) as pool:
    scores, metrics = pool.score(_terms("exact_match", "stopped"), *_batch(["a", "b"]))
    assert scores == {}
    assert set(metrics) == {"host_reward/seconds"}
    assert {p.pid for p in _workers()} == before


def test_empty_batch():
  with HostRewardPool(HostRewardSettings(workers=2)) as pool:
    scores, metrics = pool.score(_terms("exact_match_text"), [], [], [])
  assert scores["exact_match_text"].shape == (0,)
  assert _metric(metrics, "exact_match_text", "errors") == 0.0


def test_default_and_inline_settings_are_valid():
  HostRewardSettings().validate("host")
  HostRewardSettings(workers=0, chunk_size=3, fallback=-1).validate("host")


@pytest.mark.parametrize("field,value", [
    ("workers", -1), ("workers", 1.5), ("workers", True),
    ("timeout_s", 0.0), ("timeout_s", -1.0), ("timeout_s", float("inf")),
    ("timeout_s", float("nan")), ("fallback", float("nan")), ("fallback", float("-inf")),
    ("chunk_size", -1), ("chunk_size", 2.0),
])
def test_settings_validation_names_the_field(field, value):
  settings = HostRewardSettings(**{field: value})
  with pytest.raises(ValueError, match=rf"^rl\.host_rewards\.{field} "):
    settings.validate("rl.host_rewards")
  with pytest.raises(ValueError, match=rf"\.{field} "):
    HostRewardPool(settings)
