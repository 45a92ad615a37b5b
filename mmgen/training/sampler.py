"""A deterministic, resumable, sharded order over a map-style dataset.

The training stream is an endless sequence of sample positions ``0, 1, 2, ...``. Position ``p``
is item ``perm_e[i]`` of the dataset, where ``(e, i) = divmod(p, len(dataset))`` and ``perm_e`` is
a permutation seeded by ``(seed, e)``. Optimiser step ``s`` consumes positions
``[s * B, (s + 1) * B)`` for the global batch ``B``; within it, micro-step ``a`` of process
``r`` (of ``W``, with ``A`` accumulation steps) takes the slice number ``a * W + r``.

So the whole state of the data is one number, the count of samples seen: resuming skips to it
without loading a single skipped batch, and the global batch of every step is the same for
any number of processes (which is what makes a 2-process run equal a 1-process run).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

__all__ = ["ShardedStreamSampler", "position_of"]


def position_of(samples_seen: int, num_samples: int) -> tuple[int, int]:
    """``(epoch, index)`` of the next sample in the stream."""
    return divmod(samples_seen, num_samples)


class ShardedStreamSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this process's micro-batches (lists of dataset indices), forever, from ``start_sample`` on."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        start_sample: int = 0,
        shuffle: bool = True,
    ):
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        if global_batch % (world_size * grad_accum):
            raise ValueError(
                f"the global batch ({global_batch}) must be divisible by processes x accumulation steps "
                f"({world_size} x {grad_accum})"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.micro_batch = global_batch // (world_size * grad_accum)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.start_sample = start_sample
        self.shuffle = shuffle
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
                if self.shuffle
                else np.arange(self.num_samples)
            )
        return self._perms[epoch]

    def global_indices(self, first: int, count: int) -> np.ndarray:
        """Dataset indices of stream positions ``[first, first + count)``."""
        positions = np.arange(first, first + count)
        epochs, offsets = np.divmod(positions, self.num_samples)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        first = self.start_sample
        m, w = self.micro_batch, self.world_size
        while True:
            batch = self.global_indices(first, self.global_batch)  # (B,)
            for a in range(self.grad_accum):
                part = a * w + self.rank
                yield batch[part * m : (part + 1) * m].tolist()
            first += self.global_batch
