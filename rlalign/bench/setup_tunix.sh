#!/usr/bin/env bash
# Creates the virtualenv of the Tunix benchmark peer (rlalign/bench/peers/tunix_grpo.py):
#
#   bash rlalign/bench/setup_tunix.sh        # at ${TUNIX_VENV:-<repo>/.venvs/tunix}
#   .venvs/tunix/bin/python rlalign/bench/peers/tunix_grpo.py --root=... --setting=... --out=...
#
# Tunix pins safetensors<0.8, which conflicts with the main environment, so it gets its own
# venv. Does nothing if the venv already has google-tunix 0.1.7.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${TUNIX_VENV:-$REPO/.venvs/tunix}"
PYTHON="${PYTHON:-python3}"
TUNIX_VERSION=0.1.7

# jax, jaxlib and flax are the main environment's versions, so rlalign and Tunix are compiled
# by the same XLA (Tunix 0.1.7 also runs on jax 0.8.1 / flax 0.12.6). No torch: Tunix does not
# need it, and transformers in this venv is used for tokenizer/config utilities only.
PINS=(
  "google-tunix==$TUNIX_VERSION"
  "jax==0.10.2"
  "jaxlib==0.10.2"
  "flax==0.12.8"
  "optax==0.2.8"
  "safetensors==0.7.0"
)

has_tunix() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TUNIX_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata, sys
sys.exit(importlib.metadata.version("google-tunix") != sys.argv[1])
EOF
}

if has_tunix; then
  echo "tunix venv ready: $VENV"
  exit 0
fi

"$PYTHON" - <<'EOF'
import sys
if sys.version_info < (3, 11):
  sys.exit(f"google-tunix needs python >= 3.11, {sys.executable} is {sys.version.split()[0]}")
EOF

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --disable-pip-version-check "${PINS[@]}"
"$VENV/bin/python" -c "
import importlib.metadata as m
import jax, tunix.rl.grpo.grpo_learner
print('tunix venv ready:', '$VENV', {k: m.version(k) for k in ('google-tunix', 'jax', 'flax')},
      jax.devices())
"
