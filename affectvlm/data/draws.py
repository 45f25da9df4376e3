"""Random draws that are a pure function of (stream, seed, epoch, sample, view, draw).

A resumed run must draw what an uninterrupted one drew, and every DDP rank must agree, without any saved
generator state. So each number is a hash of its coordinates (SplitMix64's finaliser applied along the
chain of coordinates), vectorised over a batch in numpy: no generator objects, no order dependence.
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix(values: np.ndarray) -> np.ndarray:
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _key(value) -> np.ndarray:
    return np.asarray(value, dtype=np.int64).astype(np.uint64)


def uniform(stream: str, seed: int, epoch: int, sample_ids, num_views: int, num_draws: int) -> np.ndarray:
    """Uniform numbers in [0, 1), float64 (B, num_views, num_draws), for the samples `sample_ids` (B,).
    `stream` names the use (e.g. "camera"), so that different uses draw independent numbers."""
    with np.errstate(over="ignore"):
        state = _splitmix(np.full(1, zlib.crc32(stream.encode()), dtype=np.uint64))
        for coordinate in (seed, epoch):
            state = _splitmix(state ^ _key(coordinate))
        state = _splitmix(state ^ _key(sample_ids).reshape(-1, 1, 1))
        state = _splitmix(state ^ _key(np.arange(num_views)).reshape(1, -1, 1))
        state = _splitmix(state ^ _key(np.arange(num_draws)).reshape(1, 1, -1))
    return (state >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
