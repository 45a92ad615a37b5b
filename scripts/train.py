"""Train an experiment: ``accelerate launch scripts/train.py --config configs/X.yaml [--key=value ...]``.

The same as ``mmgen train``; see ``mmgen/training/cli.py``.
"""

import sys
from pathlib import Path

try:
    import mmgen  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgen.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
