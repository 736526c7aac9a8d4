"""Studies: small end-to-end experiments that put the diagnostics to work on trained models.

- ``agreement_on_the_line``: K tiny classifiers of "is this reversed-digit sum correct?" and
  a carry-count distribution shift; predicts their OOD accuracies from unlabelled agreement
  (ALine-S, ALine-D) and reports the error against the truth.
- ``uncertainty``: an ensemble of tiny SFT policies on the same shift; total, aleatoric and
  epistemic entropy of their sampled answers ID vs OOD, and the epistemic reward penalty.

Each runs as ``python -m rlalign.studies.<name> --out=DIR`` and writes JSON and a PNG there.
At the top of the import order, beside ``bench``: nothing in rlalign imports a study.
"""
