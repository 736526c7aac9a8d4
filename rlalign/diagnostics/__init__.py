"""Diagnostics of samples and models: what a run's numbers alone do not show.

- ``pass_at_k``: the unbiased pass@k estimator over G samples per prompt (jnp).
- ``diversity``: in-graph distinct-n within prompt groups (jnp), host-side self-BLEU.
- ``uncertainty``: total = aleatoric + epistemic entropy of sampled answers across members
  (ensemble members or paraphrases), in-graph answer class ids, and an epistemic reward
  penalty (jnp).
- ``agreement``: agreement-on-the-line, ALine-S and ALine-D, to predict OOD accuracy from
  unlabeled agreement (host-side numpy).

Beside ``metrics`` at the bottom of the import order: it imports nothing else from rlalign.
"""
from rlalign.diagnostics import agreement, diversity, pass_at_k, uncertainty

__all__ = ["agreement", "diversity", "pass_at_k", "uncertainty"]
