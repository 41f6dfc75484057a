"""python -m recipes.train run --out DIR [--seed S] | demo --out DIR (see run.py)."""

import os
import sys

# OpenMP threads that spin while they wait collapse on a shared, oversubscribed CPU (measured here:
# 10x the CPU time for the same step); waiting passively costs nothing when the cores are idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .run import main  # noqa: E402  (after the OpenMP setting: torch reads it when it starts)

if __name__ == "__main__":
    sys.exit(main())
