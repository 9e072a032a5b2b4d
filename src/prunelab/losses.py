"""The task loss, computed in this one place: training, gradient pruning scores (Taylor, SNIP),
adversarial attacks, quantization-aware training and distillation's hard-label part."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` against integer class ``targets``."""
    return F.cross_entropy(logits, targets)
