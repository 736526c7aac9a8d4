"""Hugging Face checkpoints (Llama, Qwen2/2.5, Qwen3, Gemma 1/2/3-text) on our backbone.

  cfg = model_config_from_dir("/ckpt")                  # config.json -> ModelConfig
  cfg, params = load_hf_checkpoint("/ckpt", dtype="bfloat16")
  save_hf_checkpoint(params, cfg, "/out", hf_config_template="/ckpt", tokenizer_dir="/ckpt")
  scores = sequence_scores(params, tokens, mask, cfg)    # reward models, [B]
"""
from rlalign.models.hf.checkpoint import (CheckpointError, load_hf_checkpoint,
                                          model_config_from_dir, read_hf_config,
                                          save_hf_checkpoint)
from rlalign.models.hf.families import (ARCHITECTURES, FAMILIES, HFConfigError,
                                        hf_config_from_model, model_config_from_hf, tensor_table)
from rlalign.models.hf.safetensors_io import SafetensorsError, SafetensorsFile
from rlalign.models.transformer import sequence_scores

__all__ = ["ARCHITECTURES", "FAMILIES", "CheckpointError", "HFConfigError", "SafetensorsError",
           "SafetensorsFile", "hf_config_from_model", "load_hf_checkpoint",
           "model_config_from_dir", "model_config_from_hf", "read_hf_config",
           "save_hf_checkpoint", "sequence_scores", "tensor_table"]
