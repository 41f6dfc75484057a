"""Test setup: the repository root on sys.path, so tests import `engine`, `kernels`, `app`."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import hf_oracle  # noqa: E402

hf_oracle.prepare()   # before any test imports transformers (it checks for torchvision once)
