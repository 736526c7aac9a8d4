"""GRPO on a Llama-2-7B-shaped policy: the memory plan for a TPU v5p-64 slice or 8 H100s.

The argument names the target, optionally followed by JSONL prompt files:

  python -m rlalign.main --config=configs/grpo_7b.py:v5p-64 --workdir=DIR --dry_run \
      --device_memory_gib=95
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m rlalign.main --config=configs/grpo_7b.py:8xh100 --workdir=DIR --dry_run \
      --device_memory_gib=80

  v5p-64   32 chips (95 GiB HBM each), one slice, FSDP over all 32; 64 prompts x 8 samples
  8xh100   8 GPUs (80 GiB each), one NVLink node, FSDP over all 8; 32 prompts x 8 samples

Model: vocab 32000, d_model 4096, 32 layers, 32 heads (32 KV heads), head_dim 128, d_ff 11008,
untied LM head, bfloat16 params and compute, layers rematerialised. Prompts up to 512 tokens,
512 new tokens, minibatches of 64 rollouts. The KV cache of one sampling call dominates: on
8 GPUs 64 x 8 rollouts would hold 32 GiB of cache per device, and the dry run estimates a
128 GiB peak, hence 32 prompts there. ``--dry_run`` (see ``rlalign/rl/dry_run.py``) compiles
the step without allocating the model; README.md, "Scaling out", has the per-device tables.

A real run needs real data and weights: pass the JSONL files in the argument
(``:v5p-64,/data/train.jsonl,/data/test.jsonl``) and point ``data.tokenizer_dir`` (and the
initial weights) at a Llama-2-7B checkpoint by override. Without files the paths below are
placeholders: a dry run never reads them, a real run stops at data preparation.

Expected: the dry run fits both targets; see the README for the figures.
"""
import ml_collections

from rlalign import presets

TARGETS = {
    # name: (mesh ici over ("data", "fsdp", "tensor"), prompts per step); 8 samples each
    "v5p-64": ((1, 32, 1), 64),
    "8xh100": ((1, 8, 1), 32),
}


def get_config(arg: str = ""):
  target, _, rest = arg.partition(",")
  if target not in TARGETS:
    raise ValueError(f"grpo_7b.py needs a target, one of {sorted(TARGETS)}: "
                     f"--config=configs/grpo_7b.py:v5p-64[,train.jsonl[,test.jsonl]]; got {arg!r}")
  ici, prompts = TARGETS[target]
  train_path, _, test_path = rest.partition(",")
  train_path = train_path or "/data/train.jsonl"  # placeholder: see the docstring

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                 head_dim=128, d_ff=11008, rope_theta=10_000.0, norm_eps=1e-5,
                 tie_embeddings=False, heads=("lm",), dtype="bfloat16", param_dtype="bfloat16",
                 remat=True)
  c.data = dict(task="jsonl", data_dir="", train_path=train_path,
                test_path=test_path or train_path, max_prompt_len=512, max_answer_len=64)
  c.sampling = dict(max_new_tokens=512, temperature=1.0, top_k=0, top_p=1.0)
  c.roles = presets.policy_and_reference(
      optimizer=dict(learning_rate=1e-6, warmup_steps=10, max_grad_norm=1.0))
  # 64 rollouts per minibatch on both targets.
  c.phases = dict(rl=presets.grpo_phase(steps=200, batch_size=prompts * 8, group_size=8,
                                        minibatches=prompts // 8))
  c.recipe = dict(name="sequence", order=("rl",))
  c.mesh = presets.mesh(ici=ici)
  # sampler_layout.separate=True gives decoding a mesh of its own.
  c.sampler_layout = presets.sampler_layout(c.mesh)
  c.train = dict(log_every=1, eval_every=50, checkpoint_every=50, eval_batch_size=64)
  return ml_collections.ConfigDict(c.to_dict())
