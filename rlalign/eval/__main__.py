"""``python -m rlalign.eval``: one checkpoint on one dataset split under named judges.

See :mod:`rlalign.eval.checkpoint_eval` for what it reads, measures and writes.
"""
from __future__ import annotations

import sys

from rlalign.eval import checkpoint_eval

# The guard matters: host judges run in ``spawn``-started workers, which import this module.
if __name__ == "__main__":
  sys.exit(checkpoint_eval.main())
