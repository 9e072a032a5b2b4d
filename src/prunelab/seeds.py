"""Seed derivation, in this one module.

- :func:`derive_seed` mixes integers (seed, epoch, rank, batch index, salts) into one well-spread
  seed: every new use takes this one.
- :func:`event_seed` is the older linear formula ``seed * 1_000_003 + event`` that the pruning
  masks of stochastic scores (``pruner=random``) and the lottery's random controls were drawn
  with; it stays so that the same seed still gives the same published masks.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def derive_seed(*values: int) -> int:
    """Mix integers (seed, epoch, rank, batch index, ...) into one well-spread 63-bit seed.

    Uses :class:`numpy.random.SeedSequence`, so nearby inputs give unrelated seeds.
    """
    entropy = [int(v) & _MASK64 for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


def event_seed(seed: int, event: int) -> int:
    """``seed * 1_000_003 + event``: the seed of pruning event (or lottery level) ``event``."""
    return int(seed) * 1_000_003 + int(event)
