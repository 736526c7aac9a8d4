"""Building blocks that config files share (big_vision's ``configs/common.py``, as a module any
config file can import wherever it is run from).

Each returns plain dicts for a ConfigDict; nothing here is typed or validated: that happens in
``rlalign/config.py`` like for any other config value.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import ml_collections

from rlalign.parallel.mesh import DEFAULT_RULES


def mesh(ici=(-1, 1, 1), dcn=(1, 1, 1)) -> Dict[str, Any]:
  """data x fsdp x tensor; -1 takes the devices left. Rules map logical axes to mesh axes."""
  return dict(axes=("data", "fsdp", "tensor"), ici=ici, dcn=dcn, rules=dict(DEFAULT_RULES))


def sampler_layout(mesh_dict: Dict[str, Any]) -> Dict[str, Any]:
  """Set ``separate=True`` to give sampling its own mesh shape and rules (the policy is
  resharded into it every step); by default the sampler reads the learner's arrays."""
  return dict(separate=False, mesh=dict(mesh_dict))


def policy_and_reference(optimizer: Dict[str, Any], **policy: Any) -> Dict[str, Any]:
  """A trained policy and a frozen reference: a copy of the policy taken when the first phase
  that reads it (RL) starts, so after any warm start."""
  return dict(policy=dict(optimizer=optimizer, **policy),
              reference=dict(weights=dict(source="role", role="policy"), trainable=False))


def generator_and_verifier(verifier: str = "verifier") -> Dict[str, Any]:
  """The alternating recipe's roles on the default task: a generator, its frozen reference,
  and a verifier that is the warm-started backbone with a fresh scalar head, taken when the
  loop starts."""
  return dict(
      generator=dict(optimizer=dict(ADDITION_RL_OPTIMIZER)),
      reference=dict(weights=dict(source="role", role="generator"), trainable=False),
      **{verifier: dict(weights=dict(source="role", role="generator"), heads=("scalar",),
                        optimizer=dict(learning_rate=1e-3, warmup_steps=10,
                                       max_grad_norm=1.0))})


def sft_phase(steps: int, batch_size: int, optimizer: Dict[str, Any]) -> Dict[str, Any]:
  """Supervised fine-tuning on the dataset's demonstrations."""
  return dict(steps=steps, batch_size=batch_size, objective=dict(name="sft"),
              optimizer=optimizer)


def grpo_phase(steps: int, batch_size: int, group_size: int, *, minibatches: int = 1,
               kl_coef: float = 1e-3, rewards: Optional[Dict[str, Any]] = None,
               **objective: Any) -> Dict[str, Any]:
  return dict(steps=steps, batch_size=batch_size, group_size=group_size, epochs=1,
              minibatches=minibatches, advantage="group_norm",
              rewards=rewards or {"exact_match": 1.0},
              objective=dict(name="grpo", clip_eps=0.2, kl_coef=kl_coef, kl_estimator="k3",
                             entropy_coef=0.0, aggregation="token", **objective))


# The default task: reversed-digit addition after a warm start on a sloppy teacher.
ADDITION_MODEL = dict(vocab_size=16, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, d_ff=256, tie_embeddings=True)
ADDITION_DATA = dict(task="addition", data_dir="", max_prompt_len=10, max_answer_len=5,
                     max_digits=3, carry_drop=0.7, num_train=50_000, num_test=512)
ADDITION_SAMPLING = dict(max_new_tokens=5, temperature=1.0, top_k=0, top_p=1.0)
ADDITION_WARM_START = dict(steps=1000, batch_size=64,
                           optimizer=dict(learning_rate=3e-3, warmup_steps=100))
# The shape of Qwen2.5-1.5B (random weights), for the recipes' real-scale dry runs.
QWEN2_5_1_5B = dict(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                    head_dim=128, d_ff=8960, rope_theta=1_000_000.0, norm_eps=1e-6,
                    tie_embeddings=True, dtype="bfloat16", param_dtype="bfloat16", remat=True)
LOOP = dict(log_every=10, eval_every=50, checkpoint_every=50, eval_batch_size=256,
            max_consecutive_skips=5, allow_config_change=False,
            # Weights & Biases beside JSONL and TensorBoard: --config.train.wandb.enabled=True
            wandb=dict(enabled=False, project="rlalign", name="", entity="", mode="online",
                       tags=()))


def addition_task(c) -> None:
  """The default task's sections on ``c``: seed, model, data, sampling, mesh and loop."""
  c.seed = 0
  c.model = dict(ADDITION_MODEL)
  c.data = dict(ADDITION_DATA)
  c.sampling = dict(ADDITION_SAMPLING)
  c.mesh = mesh()
  c.sampler_layout = sampler_layout(c.mesh)
  c.train = dict(LOOP)


def ascii_addition_task(c) -> None:
  """The default task in printable ASCII, so that a recipe can say words after an answer
  (a feedback, a verifier's question)."""
  addition_task(c)
  c.model.vocab_size = 128
  c.data.alphabet = "ascii"


def addition_pairs_task(c, arg: str, config_name: str) -> None:
  """The addition task from JSONL files of preference pairs (``rlalign.data.addition``
  writes them): ``arg`` is ``train.jsonl,test.jsonl``. Printable-ASCII characters, prompts
  of 9 tokens with BOS, answers of up to 4 digits and EOS."""
  train_path, _, test_path = arg.partition(",")
  if not train_path or not test_path:
    raise ValueError(f"{config_name} needs the train and held-out pair files: "
                     f"--config=configs/{config_name}:/path/train.jsonl,/path/test.jsonl")
  c.seed = 0
  c.model = dict(ADDITION_MODEL, vocab_size=128)
  c.data = dict(task="jsonl", data_dir="", train_path=train_path, test_path=test_path,
                max_prompt_len=10, max_answer_len=5)
  c.sampling = dict(ADDITION_SAMPLING, max_new_tokens=5)
  c.mesh = mesh()
  c.sampler_layout = sampler_layout(c.mesh)
  c.train = dict(LOOP)


def shrink_for_smoke(c) -> None:
  """``:smoke``: the same run in seconds, for tests (a ConfigDict built from these blocks)."""
  c.model.update(d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64)
  c.data.update(num_train=512, num_test=64)
  c.train.update(log_every=2, eval_every=2, checkpoint_every=2, eval_batch_size=32)


def with_smoke(c, arg: str, phases: Mapping[str, Dict[str, Any]]) -> ml_collections.ConfigDict:
  """``c`` as a ConfigDict; with ``arg == "smoke"`` shrunk, each phase of ``phases`` updated
  with its values (steps, batch sizes). Any other non-empty ``arg`` is an error."""
  c = ml_collections.ConfigDict(c.to_dict())
  if arg == "smoke":
    shrink_for_smoke(c)
    for name, values in phases.items():
      c.phases[name].update(values)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected '' or 'smoke'")
  return c


# The RL family's shared budget on the default task: the GRPO job's optimizer, rollouts per
# step and steps, so the algorithms differ only in what their configs name.
ADDITION_RL_OPTIMIZER = dict(learning_rate=5e-4, warmup_steps=10, max_grad_norm=1.0)
ADDITION_RL_BUDGET = dict(steps=300, batch_size=256, epochs=1, minibatches=2)
# The preference family's: the DPO job's warm start, optimizer and steps.
PREFERENCE_WARM_START = dict(steps=800, batch_size=64,
                             optimizer=dict(learning_rate=3e-3, warmup_steps=100))
PREFERENCE_OPTIMIZER = dict(learning_rate=1e-4, warmup_steps=10, max_grad_norm=1.0)
PREFERENCE_BUDGET = dict(steps=400, batch_size=64)


def rl_phase(objective: Dict[str, Any], *, group_size: int = 8, advantage: str = "",
             rewards: Optional[Dict[str, Any]] = None, **phase: Any) -> Dict[str, Any]:
  """One RL phase of the shared budget: ``objective`` is ``dict(name=..., **hparams)``;
  ``advantage`` "" takes the objective's own estimator."""
  return dict(ADDITION_RL_BUDGET, group_size=group_size, advantage=advantage,
              rewards=rewards or {"exact_match": 1.0}, objective=objective, **phase)


def addition_rl(arg: str, rl: Dict[str, Any], *, roles: Optional[Dict[str, Any]] = None,
                before: Optional[Dict[str, Dict[str, Any]]] = None,
                smoke: Optional[Dict[str, Dict[str, Any]]] = None) -> ml_collections.ConfigDict:
  """The default task's RL job with a phase ``rl``: the warm start, then any phases of
  ``before`` (in order), then ``rl``; ``roles`` adds roles beside the policy and reference.
  ``:smoke`` runs each phase for 4 steps of 4 prompts."""
  c = ml_collections.ConfigDict()
  addition_task(c)
  c.roles = dict(policy_and_reference(optimizer=dict(ADDITION_RL_OPTIMIZER)), **(roles or {}))
  phases = dict(warm_start=sft_phase(**ADDITION_WARM_START), **(before or {}), rl=rl)
  c.phases = phases
  c.recipe = dict(name="sequence", order=tuple(phases))
  shrink = {name: dict(steps=4, batch_size=4 * p.get("group_size", 4)) if "group_size" in p
            else dict(steps=4, batch_size=16) for name, p in phases.items()}
  for name, values in (smoke or {}).items():
    shrink[name].update(values)
  return with_smoke(c, arg, shrink)


def addition_preference(arg: str, phase: Dict[str, Any], config_name: str, *,
                        name: str = "pref") -> ml_collections.ConfigDict:
  """The preference family's job on addition pairs (``addition_pairs_task``): the warm start,
  then one offline phase ``name`` against a reference copied as it starts."""
  c = ml_collections.ConfigDict()
  addition_pairs_task(c, arg, config_name)
  c.roles = policy_and_reference(optimizer=dict(PREFERENCE_OPTIMIZER))
  c.phases = {"warm_start": sft_phase(**PREFERENCE_WARM_START),
              name: dict(PREFERENCE_BUDGET, **phase)}
  c.recipe = dict(name="sequence", order=("warm_start", name))
  return ml_collections.ConfigDict(c.to_dict())


def start_from_hf(c, hf_dir: str, role: str, config_name: str) -> None:
  """``c``'s ``role`` starts from the Hugging Face checkpoint ``hf_dir`` and is exported back
  to ``<workdir>/hf[_<role>]``: the checkpoint's model (float32 params), its tokenizer and
  chat template read the prompts, and sampling stops at its EOS."""
  import dataclasses
  from rlalign.models import hf  # only for configs that read a checkpoint
  if not hf_dir:
    raise ValueError(f"{config_name}:hf needs a checkpoint directory: --config="
                     f"configs/{config_name}.py:hf:/path/to/hf_checkpoint")
  model = dataclasses.replace(hf.model_config_from_dir(hf_dir), param_dtype="float32")
  eos = hf.read_hf_config(hf_dir).get("eos_token_id")
  c.model = dataclasses.asdict(model)
  c.roles[role].weights = dict(source="hf", path=hf_dir)
  c.roles[role].export_hf = True
  c.data.update(tokenizer_dir=hf_dir, prompt_format="chat", max_prompt_len=64)
  c.sampling.stop_tokens = tuple([eos] if isinstance(eos, int) else list(eos or []))


# Real-scale dry-run targets: (ici mesh sizes, prompts per step). FSDP over the chips.
SCALE_TARGETS = {"v5p-8": (1, 4, 1), "8xh100": (1, 8, 1)}


def at_scale(c, target: str, config_name: str) -> None:
  """``c`` as a Qwen2.5-1.5B-shaped run for ``--dry_run`` on ``target``: the model, 256-token
  prompts, 64-token answers, 512 new tokens and FSDP over the target's devices."""
  if target not in SCALE_TARGETS:
    raise ValueError(f"{config_name}:scale needs a target, one of {sorted(SCALE_TARGETS)}; "
                     f"got {target!r}")
  c.model = dict(QWEN2_5_1_5B)
  c.data.update(max_prompt_len=256, max_answer_len=64)
  c.sampling.max_new_tokens = 512
  c.mesh = mesh(ici=SCALE_TARGETS[target])
  c.sampler_layout = sampler_layout(c.mesh)


def recipe_config(arg: str, default_arm: str, arm_config, hf_config, scale_config,
                  smoke: Mapping[str, Dict[str, Any]]) -> ml_collections.ConfigDict:
  """A recipe config's argument: ``ARM[,smoke]``, ``smoke`` (the default arm's),
  ``hf:DIR[,smoke]`` (``hf_config(DIR)``; smoke shrinks the run, not the checkpoint's model)
  or ``scale:TARGET`` (``scale_config(TARGET)``, for ``--dry_run``)."""
  arm, _, rest = (arg or default_arm).partition(",")
  if arm == "smoke":
    arm, rest = default_arm, "smoke"
  if arm.startswith("scale:") or arm == "scale":
    return ml_collections.ConfigDict(scale_config(arg[len("scale:"):]).to_dict())
  if arm.startswith("hf:") or arm == "hf":
    hf_dir, _, rest = arg[3:].partition(",")
    full = hf_config(hf_dir)
    c = with_smoke(full, rest, smoke)
    c.model = full.model  # the checkpoint fixes the model; smoke shrinks only the run
    return c
  return with_smoke(arm_config(arm), rest, smoke)
