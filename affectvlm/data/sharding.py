"""Which samples each DDP rank reads at each step of each epoch.

Every rank computes the same permutation of the samples from (seed, epoch) and takes every `num_shards`-th
entry of it, starting at its own `shard_id`: one epoch shows every sample exactly once across ranks. Ranks
that hold one sample fewer, and the last batch of each, are padded to full batches; the padding rows are
marked invalid (their ids are real samples, so that they can be read and shaped like the others), and every
rank runs the same number of equal-sized steps, as DDP and all-gather need. `batch(epoch, step)` is a pure
function, so a run can start at any (epoch, step).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


class EpochOrder:
    def __init__(self, num_samples: int, batch_size: int, num_shards: int = 1, shard_id: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if num_samples < 1 or batch_size < 1 or num_shards < 1:
            raise ValueError(f"epoch order: need num_samples, batch_size and num_shards >= 1, got {num_samples}, "
                             f"{batch_size}, {num_shards}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"epoch order: shard_id {shard_id} is not in [0, {num_shards})")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.num_shards, self.shard_id = num_shards, shard_id
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = math.ceil(math.ceil(num_samples / num_shards) / batch_size)
        self._shard_of_epoch = lru_cache(maxsize=2)(self._shard)

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample_ids int64 (B,), valid bool (B,)) of this rank at `step` of `epoch`."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside the epoch's {self.steps_per_epoch} steps")
        ids, valid = self._shard_of_epoch(epoch)
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        return ids[rows].copy(), valid[rows].copy()

    def _shard(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        mine = order[self.shard_id::self.num_shards]
        length = self.steps_per_epoch * self.batch_size
        padding = np.resize(mine if len(mine) else order, length - len(mine))
        ids = np.concatenate([mine, padding]).astype(np.int64)
        valid = np.arange(length) < len(mine)
        return ids, valid
