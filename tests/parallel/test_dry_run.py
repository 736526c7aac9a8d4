"""The dry run compiles a run's programs for a (2, 2, 2) mesh of fake CPU devices, runs none,
and counts per-device bytes as a hand computation does."""
import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlalign.config import ExperimentConfig, PhaseConfig, RoleConfig, SamplerLayoutConfig
from rlalign.rewards.base import RewardTerm
from rlalign.data import pipeline, tokenizer as tok_lib
from rlalign.models import transformer as tfm
from rlalign.parallel.mesh import MeshConfig
from rlalign.rl import dry_run, iteration
from rlalign.rl.state import OptimizerConfig
from rlalign.sampling import SamplingConfig
from tests.configs import load_config

# Odd sizes, so that no array another test leaves alive has a param's shape.
V, D, L, H, K, HD, F = 24, 48, 2, 4, 2, 8, 96
P, A, N = 8, 4, 4            # prompt, answer and new tokens
ROLLOUTS, GROUP = 16, 2


def make_cfg(extra_roles=(), **phase) -> ExperimentConfig:
  model = tfm.ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=K,
                          head_dim=HD, d_ff=F, tie_embeddings=False, param_dtype="bfloat16",
                          dtype="float32")
  return ExperimentConfig(
      model=model,
      data=pipeline.DataConfig(data_dir="unused", max_prompt_len=P, max_answer_len=A,
                               max_digits=1),
      sampling=SamplingConfig(max_new_tokens=N, stop_tokens=(2,)),
      roles=(("policy", RoleConfig(optimizer=OptimizerConfig(warmup_steps=0))),
             ("reference", RoleConfig(trainable=False))) + tuple(extra_roles),
      phases=(("rl", PhaseConfig(**{**dict(batch_size=ROLLOUTS, group_size=GROUP,
                                           minibatches=2), **phase})),),
      mesh=MeshConfig(ici=(2, 2, 2))).validate()


# Elements of the params split by both embed (-> fsdp) and vocab/heads/mlp (-> tensor), and of
# those split by embed only (the norms).
BOTH = V * D * 2 + L * (D * H * HD + 2 * D * K * HD + H * HD * D + 3 * D * F)
EMBED_ONLY = 2 * L * D + D


def hand_bytes():
  """Per-device bytes on data=2 x fsdp=2 x tensor=2, by hand from the default rules.

  embed -> fsdp; vocab, heads and mlp -> tensor; batch -> data x fsdp; the rest replicated.
  """
  params = (BOTH // 4 + EMBED_ONLY // 2) * 2                                    # bfloat16
  reward_model = params - (D * V // 4) * 2 + (D // 2 + 1) * 2  # no LM head; scalar head w, b
  kv = 2 * L * ROLLOUTS * (P + N) * K * HD * 4 // (4 * 2)      # batch over 4, kv_heads over 2
  return dict(params=params, grads=2 * params, reference=params, reward_model=reward_model,
              # Adam's two moments in the params' dtype, plus its int32 step count.
              optimizer=2 * params + 4, kv_cache=kv)


@pytest.fixture(scope="module")
def report_and_live():
  before = {id(a) for a in jax.live_arrays()}
  report = dry_run.dry_run(make_cfg(), reward_model=True)
  new = [a for a in jax.live_arrays() if id(a) not in before]
  return report, new


def test_bytes_per_device_match_hand_computation(report_and_live):
  report, _ = report_and_live
  assert report.mesh == {"data": 2, "fsdp": 2, "tensor": 2} and report.devices == 8
  got = {k: getattr(report.state, k) for k in hand_bytes()}
  assert got == hand_bytes()
  assert report.state.kv_shape == (L, ROLLOUTS, K, P + N, HD)


def test_programs_compiled_and_nothing_ran(report_and_live):
  report, new_arrays = report_and_live
  rl_step, sampler = report.programs
  assert (rl_step.name, sampler.name) == ("rl_step", "sampler")
  s = report.state
  # The step's arguments hold the state and the reference; the donated state is aliased.
  assert rl_step.arguments >= s.params + s.optimizer + s.reference
  assert rl_step.aliased >= s.params + s.optimizer
  assert sampler.arguments >= s.params and sampler.temp >= s.kv_cache
  assert rl_step.outside == s.reward_model
  assert sampler.outside == s.optimizer + s.reference + s.reward_model
  assert report.peak == max(p.arguments + p.outputs - p.aliased + p.temp + p.outside
                            for p in report.programs)
  # Nothing was materialised: no array the run would hold appeared.
  shapes = {x.shape for x in jax.tree.leaves(tfm.abstract_params(make_cfg().model))}
  shapes.add(report.state.kv_shape)
  assert not [a.shape for a in new_arrays if a.shape in shapes]
  assert sum(a.nbytes for a in new_arrays) < 1024


def test_verdict_against_budget(report_and_live):
  report, _ = report_and_live
  assert dry_run.verdict(report, report.peak)[0]
  ok, line = dry_run.verdict(report, report.peak - 1)
  assert not ok and "OVER BUDGET" in line
  text = dry_run.to_markdown(report, report.peak - 1)
  assert "| **peak estimate** |" in text and "OVER BUDGET" in text


def test_batch_shapes_match_the_pipeline():
  cfg = make_cfg()
  tokenizer = tok_lib.CharTokenizer(tok_lib.ADDITION_ALPHABET)
  row = pipeline.encode_example({"prompt": b"1+2=", "answer": b"3", "demonstration": b"3"},
                                tokenizer, cfg.data)
  shapes = dry_run.batch_shapes(cfg, 5)
  assert sorted(shapes) == sorted(row)
  for k, v in row.items():
    assert shapes[k].shape == (5,) + v.shape and shapes[k].dtype == v.dtype, k


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=12), "prompts per step"),         # 6 prompts over 4 batch shards
    (dict(minibatches=8), "rollouts per minibatch"),   # 2 rollouts over 4 batch shards
])
def test_layout_errors_surface_before_compiling(change, message):
  with pytest.raises(dry_run.DryRunError, match=message):
    dry_run.dry_run(make_cfg(**change))


def test_mesh_errors_surface_before_compiling():
  cfg = make_cfg()
  bad = dataclasses.replace(cfg, mesh=MeshConfig(ici=(4, 2, 2)))
  with pytest.raises(dry_run.DryRunError, match="16 devices"):
    dry_run.make_plan(bad)
  odd = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_ff=99))
  with pytest.raises(dry_run.DryRunError, match="mlp"):
    dry_run.make_plan(odd)


def test_main_writes_the_report_and_fails_over_budget(report_and_live, tmp_path, monkeypatch,
                                                      capsys):
  report, _ = report_and_live
  monkeypatch.setattr(dry_run, "dry_run", lambda cfg, reward_model: report)
  budget_gib = (report.peak - 1) / dry_run.GiB
  assert dry_run.main(make_cfg(), str(tmp_path), True, budget_gib) == 1
  assert dry_run.main(make_cfg(), str(tmp_path), True, report.peak / dry_run.GiB) == 0
  assert "verdict: fits" in (tmp_path / "dry_run.md").read_text()
  assert "OVER BUDGET" in capsys.readouterr().out


def test_cli_dispatches_the_dry_run(tmp_path):
  """``--dry_run`` reaches the dry run (here its layout check, so nothing compiles), no data."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  cmd = [sys.executable, "-m", "rlalign.main",
         f"--config={os.path.join(repo, 'configs', 'grpo_addition.py')}:smoke",
         f"--workdir={tmp_path}", "--config.mesh.ici=(2,2,2)",
         "--config.phases.rl.batch_size=24",
         "--dry_run"]
  proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert ("dry run: layout error: phases.rl.batch_size / phases.rl.group_size (prompts per "
          "step) (6)") in proc.stderr
  assert not os.listdir(tmp_path)  # no data prepared, nothing written



def test_split_iteration_compiles_the_update_and_samples_on_its_own_mesh():
  """A host reward and a separate sampler each split the step; one compile covers both."""
  cfg = dataclasses.replace(make_cfg(rewards=(RewardTerm("exact_match_text"),)),
                            sampler_layout=SamplerLayoutConfig(
                                separate=True, mesh=MeshConfig(ici=(4, 1, 2))))
  report = dry_run.dry_run(cfg)
  assert report.sampler_mesh == {"data": 4, "fsdp": 1, "tensor": 2}
  assert [p.name for p in report.programs] == ["learn", "sampler"]
  s = report.state
  # On the sampler's mesh only tensor splits the params; the batch is still split 4 ways.
  assert s.sampler_params == (BOTH // 2 + EMBED_ONLY) * 2
  assert s.kv_cache == hand_bytes()["kv_cache"]
  learn, sampler = report.programs
  assert learn.aliased >= s.params + s.optimizer
  assert sampler.arguments >= s.sampler_params
  assert sampler.outside == s.optimizer + s.reference + s.params


@pytest.mark.parametrize("target, devices", [("v5p-64", 32), ("8xh100", 8)])
def test_7b_config_validates_and_its_layouts_divide(target, devices):
  from rlalign import config as config_lib
  config = load_config("grpo_7b", target)
  config.data.data_dir = "unused"
  cfg = config_lib.from_config_dict(config)
  assert cfg.mesh.shape(devices)["fsdp"] == devices
  assert tfm.count_params(tfm.abstract_params(cfg.model)) == 6_738_415_616  # Llama-2-7B
  if devices == jax.device_count():  # no 7B array is made: layouts are checked abstractly
    dry_run.make_plan(cfg)


def test_a_learned_reward_roles_weights_are_compiled_in_as_arguments():
  """A reward model of another shape, read by the RL phase's reward: its bytes are counted
  by hand, sit among the RL step's arguments (not outside it, not as constants)."""
  from rlalign.rewards.learned import RewardModelSettings
  rm_model = tfm.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                             head_dim=8, d_ff=64, heads=("scalar",), param_dtype="float32")
  cfg = make_cfg(extra_roles=(("rm", RoleConfig(model=rm_model, trainable=False)),),
                 rewards=(RewardTerm("reward_model", 1.0, RewardModelSettings(role="rm")),))
  report = dry_run.dry_run(cfg)
  assert report.reward_roles == ("rm",)
  # embed [V, 32] (vocab -> tensor, embed -> fsdp), q, k, v, o and the 3 MLP mats split over
  # fsdp x tensor (4); norms and the scalar head's w over fsdp (2); its b replicated. float32.
  d, h, hd, f = 32, 2, 8, 64
  both = V * d + 3 * d * h * hd + h * hd * d + 3 * d * f
  expected = 4 * (both // 4 + (2 * d + d) // 2 + d // 2 + 1)
  assert report.state.reward_model == expected
  rl_step, sampler = report.programs
  s = report.state
  assert rl_step.outside == 0
  assert rl_step.arguments >= s.params + s.optimizer + s.reference + s.reward_model
  assert sampler.outside == s.optimizer + s.reference + s.reward_model


def test_a_two_model_recipe_compiles_its_own_step_with_every_roles_bytes(tmp_path):
  """easy_to_hard (the alternating loop): one program trains the generator and the verifier;
  the report counts each role's params, and the trained ones' gradients and Adam moments,
  by hand from the layouts of a (2, 2, 2) mesh."""
  from rlalign import config as config_lib, recipes
  config = load_config("easy_to_hard_addition", "cotrain,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  config.model.update(vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=K,
                      head_dim=HD, d_ff=F, tie_embeddings=False, param_dtype="bfloat16",
                      dtype="float32")
  config.phases.generate.batch_size = config.phases.verify.batch_size = 32  # 8 prompts
  cfg = config_lib.from_config_dict(config)
  before = {id(a) for a in jax.live_arrays()}
  program = recipes.get("easy_to_hard").dry_run(cfg)
  report = dry_run.dry_run_recipe(cfg, program)
  assert not [a for a in jax.live_arrays() if id(a) not in before and a.size > 64]
  by_role = {r.name: r for r in report.roles}
  params = hand_bytes()["params"]
  scalar_head = params - (D * V // 4) * 2 + (D // 2 + 1) * 2  # no LM head; w, b
  assert set(by_role) == {"generator", "reference", "verifier"}
  g, ref, v = by_role["generator"], by_role["reference"], by_role["verifier"]
  assert (g.trained, ref.trained, v.trained) == (True, False, True)
  assert g.params == ref.params == params and g.grads == 2 * params
  # Adam's two moments plus two int32 counts: Adam's and the warmup schedule's.
  assert g.optimizer == 2 * params + 8
  # The verifier: the backbone with a scalar head in place of the (untied) LM head.
  assert v.params == scalar_head
  assert v.grads == 2 * v.params and v.optimizer == 2 * v.params + 8
  (step,) = report.programs
  assert step.name == "alternating_step" and step.arguments >= g.params + v.params + ref.params
  text = dry_run.recipe_markdown(report, budget_bytes=1)
  assert "| generator (trained, bfloat16)" in text and "OVER BUDGET" in text


def test_rise_dry_runs_every_turn_in_one_program_with_the_dialogues_cache(tmp_path):
  """The RISE loop's step (both turns' sampling, best-of-4, the update) compiles on a
  (2, 2, 2) mesh, and the KV cache it reports holds the whole dialogue by hand: prompt, two
  answers, the feedback and the question again, for every best-of-4 candidate."""
  from rlalign import config as config_lib, recipes
  from rlalign.recipes import rise
  config = load_config("rise_addition", "rise,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  config.phases.rise.batch_size = 32  # 8 prompts x 4
  cfg = config_lib.from_config_dict(config)
  report = dry_run.dry_run_recipe(cfg, recipes.get("rise").dry_run(cfg))
  (step,) = report.programs
  assert step.name == "rise_step"
  P, N, F = cfg.data.max_prompt_len, cfg.sampling.max_new_tokens, len(rise.FEEDBACK)
  m = cfg.role_model("policy")
  assert report.kv_shape == (m.n_layers, 32 * 4, m.n_kv_heads, P + 2 * N + F + P, m.head_dim)
  assert {r.name for r in report.roles} == {"policy", "reference"}


@pytest.mark.slow  # the default suite is near its 10 minutes; rise's dry run stays in it
def test_spark_dry_runs_the_answers_and_every_task_in_one_program(tmp_path):
  """The SPARK step (the answers, three tasks' sampling, one update on all) compiles on a
  (2, 2, 2) mesh, and its KV cache holds the widest task by hand: the pairwise one's question,
  two answers and its texts, or the reflection's question said twice."""
  from rlalign import config as config_lib, recipes
  config = load_config("spark_addition", "spark,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  config.phases.spark.batch_size = 32  # 8 prompts x 4
  cfg = config_lib.from_config_dict(config)
  report = dry_run.dry_run_recipe(cfg, recipes.get("spark").dry_run(cfg))
  (step,) = report.programs
  assert step.name == "spark_step"
  s = cfg.recipe.settings
  P, N = cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  widest = max(P + N + len(s.pointwise), P + 2 * N + len(s.pair_between) + len(s.pairwise),
               2 * P + N + len(s.reflection))
  m = cfg.role_model("policy")
  assert report.kv_shape == (m.n_layers, 32, m.n_kv_heads, widest + N, m.head_dim)
  assert {r.name for r in report.roles} == {"policy", "reference"}


@pytest.mark.slow
def test_tango_dry_runs_both_models_in_one_program(tmp_path):
  """The RL Tango step (the generator's sampling and step scores, the verifier's sampling,
  both updates) compiles on a (2, 2, 2) mesh with all three roles, and the KV cache it
  declares is the verifier's widest prompt (the question, a whole completion and the
  template) then a verdict per new token: the report's figure, not read from the program."""
  from rlalign import config as config_lib, recipes
  config = load_config("tango_addition", "tango,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  config.phases.generate.batch_size = config.phases.verify.batch_size = 32
  cfg = config_lib.from_config_dict(config)
  report = dry_run.dry_run_recipe(cfg, recipes.get("tango").dry_run(cfg))
  (step,) = report.programs
  assert step.name == "tango_step"
  P, N = cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  m = cfg.role_model("generator")
  assert report.kv_shape == (m.n_layers, 32, m.n_kv_heads, P + N + len(" steps? ") + N,
                             m.head_dim)
  by_role = {r.name: r for r in report.roles}
  assert set(by_role) == {"generator", "reference", "verifier"}
  assert by_role["verifier"].trained and by_role["generator"].trained
  assert not by_role["reference"].trained


@pytest.mark.slow
def test_cli_dry_runs_a_recipe(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  cmd = [sys.executable, "-m", "rlalign.main", "--config=cotrain_addition:smoke",
         f"--workdir={tmp_path}", "--dry_run", "--device_memory_gib=1"]
  proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| verifier (trained, float32)" in proc.stdout and "verdict: fits" in proc.stdout
  assert os.listdir(tmp_path) == ["dry_run.md"]  # no data prepared


@pytest.mark.slow
def test_self_rewarding_dry_runs_a_round_whose_reference_judges_and_samples(tmp_path):
  """A Self-Rewarding round compiles on a (2, 2, 2) mesh: its reference role samples the
  rollouts and writes the judgements in the same program, and is the step's one frozen copy,
  counted once (not again as a reward model)."""
  from rlalign import config as config_lib
  config = load_config("self_rewarding_rubric", "self,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  config.phases.round_1.batch_size = 32
  cfg = config_lib.from_config_dict(config)
  assert cfg.phase_configs["round_1"].rewards[0].roles == ("reference_1",)
  report = dry_run.dry_run(cfg)
  assert report.reward_roles == ()
  assert report.state.reward_model == 0 and report.state.reference == report.state.params
  rl_step, _ = report.programs
  assert rl_step.outside == 0
  assert rl_step.arguments >= report.state.params + report.state.reference


@pytest.mark.slow
def test_meta_rewarding_dry_runs_both_halves_of_its_round_in_one_program(tmp_path):
  """The Meta-Rewarding round (the answers' update, the judge's judgements, the meta-judge
  and the judging's update) compiles as one program on a (2, 2, 2) mesh over the policy and
  the round's reference."""
  from rlalign import config as config_lib, recipes
  config = load_config("self_rewarding_rubric", "meta,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  config.phases.round_1.batch_size = 64  # 16 prompts; a quarter, 16 responses, posed twice
  cfg = config_lib.from_config_dict(config)
  report = dry_run.dry_run_recipe(cfg, recipes.get("self_rewarding").dry_run(cfg))
  (step,) = report.programs
  assert step.name == "round_1_meta_step"
  by_role = {r.name: r for r in report.roles}
  assert set(by_role) == {"policy", "reference_1"}
  assert by_role["policy"].trained and not by_role["reference_1"].trained
  assert recipes.get("self_rewarding").dry_run(typed_plain(tmp_path)) is None


@pytest.mark.slow
def test_the_debate_dry_runs_every_agent_and_critic_in_one_program(tmp_path):
  """The debate's step (three agents' and three critics' sampling, six updates) compiles on
  a (2, 2, 2) mesh; the KV cache it declares is a critic's prompt (three answers, two
  separators, the text before the question and the question, BOS first) then its answer;
  LoRA agents are refused with the reason."""
  from rlalign import config as config_lib, recipes
  from rlalign.recipes import debate
  config = load_config("debate_addition", "multiagent,smoke")
  config.data.data_dir = str(tmp_path)
  config.mesh.ici = (2, 2, 2)
  for k in (1, 2, 3):
    config.phases[f"round_{k}"].batch_size = 16
  cfg = config_lib.from_config_dict(config)
  report = dry_run.dry_run_recipe(cfg, recipes.get("debate").dry_run(cfg))
  (step,) = report.programs
  assert step.name == "debate_step"
  P, N = cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  m = cfg.role_model("agent_0")
  assert report.kv_shape == (m.n_layers, 16, m.n_kv_heads, 1 + 3 * N + 2 + 1 + P + N,
                             m.head_dim)
  assert {r.name for r in report.roles} == set(debate.AGENTS + debate.CRITICS)
  assert all(r.trained for r in report.roles)
  config = load_config("debate_addition", "adapters,smoke")
  config.data.data_dir = str(tmp_path)
  cfg = config_lib.from_config_dict(config)
  with pytest.raises(dry_run.DryRunError, match="does not lay out LoRA adapters"):
    dry_run.dry_run_recipe(cfg, recipes.get("debate").dry_run(cfg))


def typed_plain(tmp_path):
  from rlalign import config as config_lib
  config = load_config("self_rewarding_rubric", "self,smoke")
  config.data.data_dir = str(tmp_path)
  return config_lib.from_config_dict(config)
