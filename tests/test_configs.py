"""Every config file in configs/ loads, converts to a typed config and validates, full size and
(where it has one) at ``:smoke`` size; a new config file must be listed here."""
import dataclasses
import os

import pytest

from rlalign import config as config_lib
from rlalign.data import addition
from tests.configs import CONFIG_DIR, load_config

# How each config's argument is made: "" none, "pairs" / "unpaired" JSONL files written by
# rlalign.data.addition (":x" appends ",x" to them), or None for configs that need outside
# files (a Hugging Face checkpoint, a TPU target) and have tests of their own.
ARGS = {
    "grpo_addition": "", "ppo_addition": "", "cotrain_addition": "", "sft_addition": "",
    "dr_grpo_addition": "", "dapo_addition": "", "gspo_addition": "", "rloo_addition": "",
    "reinforce_pp_addition": "", "remax_addition": "", "tis_addition": "", "rft_addition": "",
    "rwr_addition": "", "gkd_addition": "", "online_dpo_addition": "",
    "iterative_dpo_addition": "", "prm_addition": "", "easy_to_hard_addition": "",
    "rise_addition": "", "spark_addition": "", "tango_addition": "", "self_rewarding_rubric": "",
    "debate_addition": "",
    "dpo_jsonl": "pairs", "ipo_jsonl": "pairs", "simpo_jsonl": "pairs", "orpo_jsonl": "pairs",
    "grpo_reward_model": "pairs", "kto_jsonl": "unpaired",
    "overoptimisation_addition": "pairs:proxy",
    "grpo_hf": None, "grpo_7b": None, "grpo_jsonl": None, "grpo_hf_dataset": None,
}


def test_every_config_file_is_listed():
  files = {f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "__init__.py"}
  assert files == set(ARGS)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  addition.main([f"--pairs_out={root / 'pairs'}", f"--unpaired_out={root / 'unpaired'}"])
  return {kind: f"{root / kind / 'train.jsonl'},{root / kind / 'test.jsonl'}"
          for kind in ("pairs", "unpaired")}


@pytest.mark.parametrize("name", sorted(n for n, a in ARGS.items() if a is not None))
def test_config_loads_and_validates(name, data_files, tmp_path):
  def typed(arg):
    config = load_config(name, arg)
    config.data.data_dir = str(tmp_path)  # the launcher's default: under the workdir
    return config_lib.from_config_dict(config)

  kind, _, suffix = ARGS[name].partition(":")
  cfg = typed(data_files[kind] + (f",{suffix}" if suffix else "") if kind else "")
  assert cfg.phases, name
  if not ARGS[name]:  # every self-contained config has a seconds-long :smoke variant
    assert all(p.steps <= 4 for _, p in typed("smoke").phases)


@pytest.mark.parametrize("variant", ["ensemble", "lsc"])
def test_overoptimisation_variants_differ_only_in_the_rl_reward(variant, data_files, tmp_path):
  def typed(arg):
    config = load_config("overoptimisation_addition", arg)
    config.data.data_dir = str(tmp_path)
    return config_lib.from_config_dict(config)
  base, other = typed(data_files["pairs"] + ",proxy"), typed(data_files["pairs"] + f",{variant}")
  before_rl = lambda cfg: {n: p for n, p in cfg.phases if n != "rl"}
  assert base.roles == other.roles and before_rl(base) == before_rl(other)
  rl, rl_other = base.phase_configs["rl"], other.phase_configs["rl"]
  assert rl.monitors == rl_other.monitors and rl.rewards != rl_other.rewards
  assert all(p.steps <= 4 for _, p in typed(data_files["pairs"] + f",{variant},smoke").phases)


def test_easy_to_hard_arms_differ_only_in_the_reward_on_unlabelled_prompts(tmp_path):
  def typed(arg):
    config = load_config("easy_to_hard_addition", arg)
    config.data.data_dir = str(tmp_path)
    return config_lib.from_config_dict(config)
  arms = {arm: typed(arm) for arm in ("easy_only", "majority", "self_confidence", "cotrain",
                                      "cotrain_balanced")}
  base = arms["easy_only"]
  for arm, cfg in arms.items():
    assert cfg.roles == base.roles and cfg.data == base.data and cfg.recipe == base.recipe
    others = lambda c: {n: p for n, p in c.phases if n not in ("generate", "verify")}
    assert others(cfg) == others(base)
    verify = cfg.phase_configs["verify"]
    assert verify.objective.hparams.balanced == (arm == "cotrain_balanced")
    assert dataclasses.replace(verify, objective=None) == dataclasses.replace(
        base.phase_configs["verify"], objective=None)
    gen = cfg.phase_configs["generate"]
    base_gen = base.phase_configs["generate"]
    assert dataclasses.replace(gen, rewards=()) == dataclasses.replace(base_gen, rewards=())
    extra = [t for t in gen.rewards if t.key != "exact_match"]
    assert [t.rows for t in extra] == ([] if arm == "easy_only" else ["unlabelled"]), arm
    assert all(p.steps <= 4 for _, p in typed(f"{arm},smoke").phases)
  assert typed("").phase_configs == arms["cotrain"].phase_configs
