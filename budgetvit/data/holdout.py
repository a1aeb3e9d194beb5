"""A held-out part of the training split, evaluated instead of the test/val split: what
hyperparameters should be tuned on (BENCHMARK.md, rule 4), so that the evaluation split
never takes part in a decision.

The held-out images are drawn by a permutation with a fixed seed, not train.seed, so every run
of a sweep (every seed, every arm) holds out the same images and never trains on them.
"""
from __future__ import annotations

import numpy as np

from ..config import ConfigError

HOLDOUT_SEED = 2022  # fixed on purpose: see above


def holdout_rows(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept for training, rows held out) of a training split of n images; `fraction`
    of them held out, both parts in their original order."""
    k = round(n * fraction)
    if not 0 < k < n:
        raise ConfigError(f"data.holdout={fraction:g} holds out {k} of the {n} training images; "
                          f"both parts need at least one")
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def describe(fraction: float, held: int) -> str:
    """The evaluation split's name in summary.json and the end-of-run report."""
    return f"holdout ({fraction:g} of train, {held} images)"
