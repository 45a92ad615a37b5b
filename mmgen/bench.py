"""``mmgen bench``: the side-by-side speed benchmarks of ``scripts/bench/`` (needs a source checkout).

The benchmarks compare mmgen with optional peers (transformers, dalle-pytorch) and live next to
the other scripts rather than in the package, so an installed mmgen does not carry them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

BENCH_DIR = Path(__file__).resolve().parents[1] / "scripts" / "bench"


def main(argv: Optional[list[str]] = None) -> int:
    if not (BENCH_DIR / "run_all.py").is_file():
        print(f"mmgen bench: benchmarks not found at {BENCH_DIR} (they ship with a source checkout)", file=sys.stderr)
        return 2
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    run_all = importlib.import_module("run_all")
    return run_all.main(list(sys.argv[1:] if argv is None else argv))
