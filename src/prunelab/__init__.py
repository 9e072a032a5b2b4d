"""prunelab: a Hydra + PyTorch Lightning research framework for neural-network pruning."""

__version__ = "0.1.0"
