"""Knowledge distillation (Hinton et al. 2015) while pruning and fine-tuning.

``python -m prunelab.train pruner=magnitude sparsity=0.95 distill.teacher=<dense run dir or .ckpt>``
trains the pruned student on ``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(teacher_T ||
student_T)``, where ``x_T = softmax(logits / T)``. The teacher is frozen, in eval mode, and not part
of the student's checkpoint or optimizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ConfigError
from prunelab.losses import classification_loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))`` (batch mean)."""
    ce = classification_loss(student_logits, targets)
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * (t * t) * kl


class Distiller:
    """A frozen teacher and the KD hyperparameters."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9,
                 source: str | None = None):
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"distill.temperature={temperature!r} must be a number > 0")
        if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"distill.alpha={alpha!r} must be a number in [0, 1]")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.source = source

    def to(self, device: torch.device) -> Distiller:
        self.teacher.to(device)
        return self

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return kd_loss(student_logits, teacher_logits.to(student_logits.dtype), y,
                       self.temperature, self.alpha)


def load_teacher(teacher: str, temperature: float, alpha: float, num_classes: int,
                 input_shape: tuple[int, ...]) -> Distiller:
    """A :class:`Distiller` from a prunelab run directory or checkpoint; checks that the teacher
    fits the student's data (same input shape and classes). The checkpoint is read with
    ``weights_only=True`` (:func:`prunelab.runs.read_checkpoint`)."""
    from prunelab.runs import RunError, load_run

    try:
        run = load_run(teacher, "best")
    except RunError as exc:
        raise RunError(str(exc).replace("run=", "distill.teacher=", 1)) from None
    net, dm, ckpt = run.net, run.datamodule, run.checkpoint
    if int(dm.num_classes) != int(num_classes) or tuple(dm.input_shape) != tuple(input_shape):
        raise ConfigError(f"distill.teacher={teacher!r} was trained on inputs "
                         f"{tuple(dm.input_shape)} with {dm.num_classes} classes; this run has "
                         f"{tuple(input_shape)} and {num_classes}")
    return Distiller(net.float(), temperature, alpha, source=str(Path(ckpt)))
