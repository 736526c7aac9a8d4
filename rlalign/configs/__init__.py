"""One experiment per file, each with ``get_config(arg)``; its docstring gives the command
that runs it and what it should reach. They ship in the wheel, so an installed rlalign names
them without a path: ``python -m rlalign.main --config=grpo_addition:smoke`` (the repository's
``configs/`` links here)."""
