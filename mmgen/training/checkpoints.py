"""Training checkpoints: atomic folders, a ``latest`` pointer, a total limit.

Layout under ``<output_dir>/checkpoints/``::

    step-00000500/          accelerator.save_state(): model.safetensors, optimizer.bin, random_states_<rank>.pkl, ...
      trainer_state.json    step, samples seen (the data position), elapsed time, world size, the experiment
      ema.safetensors       when EMA is on
    step-00001000/
    latest                  one line: the name of the newest complete checkpoint

A checkpoint is written into ``.tmp-step-…``, made durable (fsync), and only then renamed into
place; ``latest`` is replaced atomically after that, and old checkpoints are pruned last. A
process killed at any moment leaves ``latest`` naming a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Callable, Optional

from mmgen.config import atomic_write_text

__all__ = [
    "CheckpointNotFound",
    "TRAINER_STATE",
    "checkpoint_dir",
    "fault_point",
    "list_checkpoints",
    "prune_checkpoints",
    "read_trainer_state",
    "resolve_checkpoint",
    "save_checkpoint",
]

TRAINER_STATE = "trainer_state.json"
LATEST = "latest"
_NAME = re.compile(r"^step-(\d+)$")

# Test hook: MMGEN_FAULT="<point>:<step>" SIGKILLs the process at that point of that step's
# checkpoint ("checkpoint_midway": model written, rest not; "checkpoint_done": after `latest`).
FAULT_ENV = "MMGEN_FAULT"


class CheckpointNotFound(FileNotFoundError):
    """``--resume`` named a checkpoint that does not exist or is incomplete."""


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def fault_point(point: str, step: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_trainer_state(path: Path) -> dict[str, Any]:
    file = path / TRAINER_STATE
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointNotFound(f"{file}: cannot read the trainer state ({e})") from None


def resolve_checkpoint(spec: str, output_dir: str | os.PathLike) -> Optional[Path]:
    """The folder ``--resume`` names: ``latest`` (None when there is none yet), a checkpoint name, or a path."""
    root = checkpoint_dir(output_dir)
    if spec == LATEST:
        pointer = root / LATEST
        if pointer.is_file():
            target = root / pointer.read_text(encoding="utf-8").strip()
            if (target / TRAINER_STATE).is_file():
                return target
        found = list_checkpoints(root)  # no pointer yet (killed between rename and pointer update)
        return found[-1][1] if found else None
    path = Path(spec)
    if not path.exists() and (root / spec).exists():
        path = root / spec
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointNotFound(
            f"--resume {spec}: {path} is not a complete checkpoint (no {TRAINER_STATE}); "
            f"complete ones: {[p.name for _, p in list_checkpoints(root)] or 'none'}"
        )
    return path


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: dict[str, Any],
    write_extra: Optional[Callable[[Path], None]] = None,
    limit: Optional[int] = None,
) -> Path:
    """Write ``step-<step>`` atomically on every process; the main process publishes and prunes.

    ``write_extra(folder)`` runs on the main process only (EMA weights, ...).
    """
    root = checkpoint_dir(output_dir)
    name = f"step-{step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        fault_point("checkpoint_midway", step)
        if write_extra is not None:
            write_extra(tmp)
        # Written last: a folder holding trainer_state.json is complete.
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(trainer_state, indent=2) + "\n")
    accelerator.wait_for_everyone()  # every process's RNG file is in tmp
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        if final.exists():  # a checkpoint of the same step from an abandoned run
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, name + "\n")
        if limit is not None:
            prune_checkpoints(root, limit)
        fault_point("checkpoint_done", step)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints, and stale temporary folders."""
    removed = []
    for p in root.iterdir():
        if p.name.startswith(".tmp-step-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    found = list_checkpoints(root)
    for _, p in found[: max(0, len(found) - keep)]:
        shutil.rmtree(p)
        removed.append(p)
    return removed
