"""``python -m rlalign.export``: every checkpointed role loads in transformers and computes what
rlalign computes with the same weights; the score bias HF cannot hold is refused, or dropped
and kept; bad input is one line with exit 2 and writes nothing.

The fast tests read a workdir written here: the two-model smoke config's config.json and a
phase checkpoint (real Orbax) holding a generator and a verifier with random weights and a
nonzero verifier bias. The slow one exports both roles of a real trained run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import checkpoint as ckpt_lib
from rlalign import config as config_lib
from rlalign import export as export_lib
from rlalign.data import tokenizer as tok_lib
from rlalign.models import hf
from rlalign.models import transformer as tfm
from tests.configs import load_config

BIAS = 0.375
TEXTS = ["12+34=", "7+8=51", "999+1="]


def _cfg(workdir):
  config = load_config("cotrain_addition", "smoke")
  config.data.data_dir = str(workdir / "tfds")
  return config_lib.from_config_dict(config)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, cfg, {role: params}) with step 3 of "alternating" and an older warm_start."""
  workdir = tmp_path_factory.mktemp("run")
  cfg = _cfg(workdir)
  (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
  params = {role: tfm.init(cfg.role_model(role), jax.random.key(i))
            for i, role in enumerate(("generator", "verifier"))}
  # 2 * scale: weights large enough that the logits are not all near zero
  params = jax.tree.map(lambda x: np.asarray(x) * 2, params)
  params["verifier"]["scalar_head"]["b"] = np.asarray(BIAS, np.float32)
  with ckpt_lib.Checkpointer(str(workdir / "checkpoints" / "warm_start"), save_every=1) as c:
    c.save(1, {"roles": {"generator": {"params": jax.tree.map(np.zeros_like,
                                                             params["generator"])}}}, {})
  with ckpt_lib.Checkpointer(str(workdir / "checkpoints" / "alternating"), save_every=1) as c:
    c.save(3, {"roles": {r: {"params": p} for r, p in params.items()}}, {})
  return str(workdir), cfg, params


def _tokens(cfg):
  tokenizer = tok_lib.tokenizer_for(cfg.data)
  rows = [[tokenizer.bos_id] + tokenizer.encode(t) for t in TEXTS]
  width = max(map(len, rows))
  tokens = np.array([r + [tokenizer.pad_id] * (width - len(r)) for r in rows], np.int32)
  mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], bool)
  return tokens, mask


def test_the_generator_loads_in_transformers_with_the_same_logits(run, tmp_path):
  import torch
  import transformers
  workdir, cfg, params = run
  out = str(tmp_path / "generator")
  result = export_lib.export(export_lib.ExportSettings(run=workdir, role="generator", out=out))
  assert (result["phase"], result["step"], result["head"]) == ("alternating", 3, "lm")
  assert result["architecture"] == "LlamaForCausalLM"
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens, mask = _tokens(cfg)
  with torch.no_grad():
    theirs = model(torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  model_cfg = cfg.role_model("generator")
  hidden, _ = tfm.forward(params["generator"], tokens, tfm.positions_from_mask(mask), mask,
                          model_cfg)
  ours = np.asarray(tfm.lm_logits(params["generator"], hidden, model_cfg))
  assert np.abs(ours).max() > 1.0
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=2e-4, rtol=1e-4)
  # The character tokenizer went along, with the run's ids.
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer(TEXTS[0])["input_ids"] == tokens[0][mask[0]].tolist()
  assert tokenizer.decode(tokens[1][mask[1]][1:]) == TEXTS[1]


def test_the_verifier_scores_as_transformers_minus_its_dropped_bias(run, tmp_path):
  import torch
  import transformers
  workdir, cfg, params = run
  out = str(tmp_path / "verifier")
  with pytest.raises(ValueError, match=r"scalar_head/b is 0\.375.*--drop_score_bias"):
    export_lib.export(export_lib.ExportSettings(run=workdir, role="verifier", out=out))
  assert not os.path.exists(out)
  result = export_lib.export(export_lib.ExportSettings(run=workdir, role="verifier", out=out,
                                                       drop_score_bias=True))
  assert result["architecture"] == "LlamaForSequenceClassification"
  assert result["dropped_score_bias"] == BIAS
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      out, dtype=torch.float32).eval()
  tokens, mask = _tokens(cfg)
  with torch.no_grad():  # right-padded rows: HF finds each row's last token by pad_token_id
    theirs = model(torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()[:, 0]
  ours = np.asarray(tfm.sequence_scores(params["verifier"], tokens, mask,
                                        cfg.role_model("verifier")))
  assert np.ptp(ours) > 1e-3
  np.testing.assert_allclose(theirs, ours - BIAS, atol=2e-4)
  # rlalign's own loader adds the bias back: the round trip is exact.
  _, back = hf.load_hf_checkpoint(out)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params["verifier"]):
    got = back
    for key in path:
      got = got[key.key]
    np.testing.assert_array_equal(np.asarray(got), leaf, err_msg=jax.tree_util.keystr(path))


def test_a_zero_bias_exports_exactly_and_phase_and_step_pick_the_checkpoint(run, tmp_path):
  import transformers
  workdir, _, _ = run
  out = str(tmp_path / "old")
  result = export_lib.export(export_lib.ExportSettings(
      run=workdir, role="generator", phase="warm_start", step=1, out=out))
  assert (result["phase"], result["step"]) == ("warm_start", 1)
  weights = hf.load_hf_checkpoint(out)[1]
  assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(weights))
  transformers.AutoConfig.from_pretrained(out)  # loads


@pytest.mark.parametrize("args, names", [
    (["--run={empty}", "--out={out}"], "config.json"),
    (["--run={run}", "--role=critic", "--out={out}"], "'critic'"),
    (["--run={run}", "--role=generator", "--phase=rl", "--out={out}"], "checkpoints/rl"),
    (["--run={run}", "--role=generator", "--step=9", "--out={out}"],
     "holds role 'generator' at step 9"),
    (["--run={run}", "--role=generator", "--phase=alternating", "--step=9", "--out={out}"],
     "step 9"),
    (["--run={run}", "--role=verifier", "--head=lm", "--out={out}"], "heads ('scalar',)"),
    (["--run={run}", "--role=generator", "--family=gpt2", "--out={out}"], "'gpt2'"),
    (["--run={run}", "--role=generator"], "--out"),
    (["--run={run}", "--role=generator", "--out={existing}"], "--overwrite"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, args, names):
  empty, existing = tmp_path / "empty", tmp_path / "existing"
  empty.mkdir()
  existing.mkdir()
  argv = [a.format(run=run[0], empty=empty, out=tmp_path / "out", existing=existing)
          for a in args]
  assert export_lib.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
  assert not os.path.exists(tmp_path / "out")
  assert os.listdir(existing) == [] and sorted(os.listdir(tmp_path)) == ["empty", "existing"]


@pytest.mark.slow
def test_a_trained_two_model_run_exports_both_roles_from_the_command_line(cli, tmp_path):
  """The real thing end to end: train the smoke config, export each role as a user would."""
  import torch
  import transformers
  from tests.conftest import COTRAIN_SMOKE
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=COTRAIN_SMOKE)
  outs = {}
  for role, extra in (("generator", []), ("verifier", ["--drop_score_bias"])):
    outs[role] = str(tmp_path / role)
    proc = cli.run([sys.executable, "-m", "rlalign.export", f"--run={workdir}",
                    f"--role={role}", f"--out={outs[role]}", *extra], cli.env())
    assert f"exported role {role!r} (alternating step 4)" in proc.stdout
  _, params = cli.final_params(workdir, phase="alternating", role="generator",
                               config=COTRAIN_SMOKE)
  cfg = config_lib.from_config_dict(json.load(open(os.path.join(workdir, "config.json"))))
  tokens, mask = _tokens(cfg)
  model = transformers.AutoModelForCausalLM.from_pretrained(outs["generator"],
                                                            dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  model_cfg = cfg.role_model("generator")
  hidden, _ = tfm.forward(params, tokens, tfm.positions_from_mask(mask), mask, model_cfg)
  np.testing.assert_allclose(theirs[mask], np.asarray(tfm.lm_logits(params, hidden,
                                                                    model_cfg))[mask],
                             atol=2e-4, rtol=1e-4)
  scores = transformers.AutoModelForSequenceClassification.from_pretrained(outs["verifier"])
  assert scores.config.num_labels == 1
