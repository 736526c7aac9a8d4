"""Evaluation tools that read runs: ``proxy_gold`` draws proxy and gold reward against
sqrt(KL) from runs' metrics (reward over-optimisation, Gao et al. 2023)."""
