"""Shared helpers for the speed benchmarks: timing, peer imports, result rows and the table.

Every benchmark times mmgen and its peer in the same process, with the same shapes and the
same thread count. Repeats alternate the two sides (mmgen, peer, mmgen, peer, ...) so that a
burst of load from another process on a shared machine hits both, and the median is reported.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

try:
    import mmgen  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

INSTALL = {
    "transformers": "pip install transformers",
    "dalle_pytorch": (
        "pip install --no-deps dalle-pytorch==1.6.6 taming-transformers-rom1504 && "
        "pip install axial-positional-embedding rotary-embedding-torch ftfy omegaconf requests webdataset "
        "pytorch-lightning 'setuptools>=77.0.3,<81' Cython && pip install --no-build-isolation youtokentome "
        "(see docs/benchmarks.md, Installing the peers)"
    ),
}


@dataclass
class Result:
    """One line of the results table: a throughput for mmgen and (when installed) for the peer."""

    bench: str  # e.g. "text decode"
    case: str  # e.g. "batch 8"
    unit: str  # e.g. "tokens/s"
    mmgen: float
    peer: Optional[float] = None  # None when the peer is not installed
    peer_name: str = ""
    extra: dict = field(default_factory=dict)  # memory figures, notes
    cpu_ratio: Optional[float] = None  # peer CPU seconds / mmgen CPU seconds per call (see time_sides)

    @property
    def ratio(self) -> Optional[float]:
        return None if not self.peer else self.mmgen / self.peer

    def to_dict(self) -> dict:
        return dict(asdict(self), ratio=self.ratio)


def peer_missing(module: str) -> str:
    """The message a benchmark prints when its peer cannot be imported."""
    return f"peer not installed: {module} ({INSTALL[module]}); timing the mmgen side only"


def try_import(module: str) -> Optional[types.ModuleType]:
    """The peer module, or None (after printing how to install it)."""
    try:
        if module == "dalle_pytorch":
            _shim_pytorch_lightning()
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything else at import
        print(peer_missing(module) + f" [{type(e).__name__}: {e}]")
        return None


def _shim_pytorch_lightning() -> None:
    """taming-transformers imports pytorch_lightning.utilities.distributed, gone in Lightning 2.x."""
    name = "pytorch_lightning.utilities.distributed"
    if name in sys.modules:
        return
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    stand_in = types.ModuleType(name)
    stand_in.rank_zero_only = rank_zero_only
    sys.modules[name] = stand_in


@dataclass
class Timing:
    wall: float  # median wall-clock seconds per call
    cpu: float  # median CPU seconds of this process per call (all threads)


def time_sides(sides: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, Timing]:
    """Median wall and CPU seconds per call of each side; sides alternate within every repeat.

    Wall time is what a user waits. CPU time leaves out the time the process sat descheduled
    while other programs used the cores, so on a busy shared machine its ratio is the steadier
    one (with one thread; with more, OpenMP threads spinning at barriers count as CPU time).
    """
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeats):
        order = list(sides.items())
        if r % 2:
            order.reverse()  # alternate who goes first, so neither side always follows the other
        for name, fn in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in sides}


def cpu_ratio(t: dict[str, Timing]) -> Optional[float]:
    """Peer CPU time / mmgen CPU time (> 1: mmgen needs less CPU for the same work)."""
    return t["peer"].cpu / t["mmgen"].cpu if "peer" in t and t["mmgen"].cpu > 0 else None


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both sides (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side first")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: checks that it runs, not speed")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser


def setup(threads: int, seed: int = 0) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def format_table(results: list[Result]) -> str:
    """A Markdown table: mmgen, peer, ratio (mmgen / peer; > 1 means mmgen is faster), and the CPU-time ratio."""
    lines = [
        "| benchmark | case | unit | mmgen | peer | peer value | mmgen / peer | by CPU time |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        peer = "not installed" if r.peer is None else f"{r.peer:,.0f}"
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}×"
        by_cpu = "–" if r.cpu_ratio is None else f"{r.cpu_ratio:.2f}×"
        lines.append(f"| {r.bench} | {r.case} | {r.unit} | {r.mmgen:,.0f} | {r.peer_name} | {peer} | {ratio} | {by_cpu} |")
    notes = [(r, k, v) for r in results for k, v in r.extra.items()]
    for r, k, v in notes:
        lines.append(f"\n* {r.bench}, {r.case}: {k} = {v}")
    return "\n".join(lines)


def report(results: list[Result], json_path: Optional[Path] = None) -> None:
    print(format_table(results))
    if json_path is not None:
        import json

        json_path.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")


def environment() -> str:
    """Machine and versions, for the top of a results table."""
    import os
    import platform

    parts = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
        f"threads {torch.get_num_threads()}",
        "CUDA " + (torch.cuda.get_device_name() if torch.cuda.is_available() else "not available"),
    ]
    for module in ("transformers", "dalle_pytorch"):
        try:
            from importlib.metadata import version

            parts.append(f"{module} {version(module.replace('_', '-'))}")
        except Exception:
            parts.append(f"{module} not installed")
    return ", ".join(parts)
