"""The benchmarks live in the top-level `bench` package, which is not installed: import it from
the repository root."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
