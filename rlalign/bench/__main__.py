"""``python -m rlalign.bench``: see :mod:`rlalign.bench.run`."""
from rlalign.bench.run import main

main()
