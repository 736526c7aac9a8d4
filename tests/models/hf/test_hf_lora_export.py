"""LoRA adapters merged into the weights export to a checkpoint transformers runs as is."""
import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import hf, lora
from rlalign.models import transformer as tfm

from hf_zoo import left_padded_batch, torch, transformers


def test_merged_lora_exports_and_reloads_in_transformers(zoo, tmp_path):
  base = zoo.get("qwen2")
  cfg = lora.LoRAConfig(rank=4, alpha=8.0, target_regex=r"layers/(q|v|down)")
  adapters = lora.init_lora(base.params, cfg, jax.random.key(0), tfm.logical_axes(base.cfg))
  # Adapters start with B = 0; give B values so the merge changes the model.
  adapters = jax.tree_util.tree_map_with_path(
      lambda path, x: (0.05 * jax.random.normal(jax.random.key(len(str(path))), x.shape, x.dtype)
                       if "'b'" in str(path) else x), adapters)
  merged = lora.merge(base.params, adapters, cfg)
  changed = [k for k in ("q", "v", "down")
             if not np.allclose(merged["layers"][k], base.params["layers"][k])]
  assert changed == ["q", "v", "down"]
  np.testing.assert_array_equal(merged["layers"]["k"], base.params["layers"]["k"])

  out = hf.save_hf_checkpoint(merged, base.cfg, str(tmp_path / "merged"),
                              hf_config_template=base.path)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  tokens, mask = left_padded_batch(seed=4)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
  hidden, _ = tfm.forward(merged, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask),
                          base.cfg)
  ours = np.asarray(tfm.lm_logits(merged, hidden, base.cfg))
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4)
