"""A synthetic data set drawn from a seed (no files): class prototypes plus noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from prunelab.data.base import TensorDataModule
from prunelab.seeds import derive_seed

# Salt that separates the data generator from the other generators derived from `seed`.
_SYNTHETIC_SALT = 0x5E7


class SyntheticDataModule(TensorDataModule):
    """Random, seeded, learnable classification data of any input shape and class count.

    Meant for speed tests and smoke tests without files. Each class ``k`` has a fixed random
    prototype ``p_k`` (for image shapes ``(C, H, W)`` a smooth pattern: Gaussian noise at
    resolution at most 4x4, bilinearly upsampled, scaled to unit variance, so that
    convolutional networks with pooling can pick it up too). A sample of class ``y`` (uniformly
    drawn) is ``p_y + noise_std * eps`` with standard Gaussian ``eps``. Classes are therefore
    well separated: a model that learns reaches high accuracy (the Bayes error is near zero at
    the default ``noise_std=1``; raise ``noise_std`` to make the task harder), while chance level
    is ``1 / num_classes``, so accuracy is a meaningful signal. With ``normalize`` the inputs are
    divided by their standard deviation ``sqrt(1 + noise_std**2)``.

    Args:
        input_shape: shape of one sample, e.g. ``(3, 32, 32)``.
        num_classes: number of classes.
        num_samples: size of the training set (before the validation split).
        num_test_samples: size of the test set.
        noise_std: standard deviation of the per-pixel noise (difficulty).
        root: ignored (accepted so that all data configs share the same keys).
        batch_size, eval_batch_size, val_size, subset, seed, normalize, drop_last: as in
            :class:`TensorDataModule`.
    """

    name = "synthetic"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        num_samples: int = 10000,
        num_test_samples: int = 2000,
        noise_std: float = 1.0,
        val_size: int = 1000,
        **common: Any,
    ) -> None:
        super().__init__(val_size=val_size, **common)
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape must be non-empty and positive, got {shape}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if num_samples < 1 or num_test_samples < 1:
            raise ValueError("num_samples and num_test_samples must be >= 1")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.input_shape = shape
        self.num_classes = int(num_classes)
        self.num_samples = int(num_samples)
        self.num_test_samples = int(num_test_samples)
        self.noise_std = float(noise_std)

    def prototypes(self, generator: torch.Generator) -> Tensor:
        """Class prototypes ``(num_classes, *input_shape)``, unit variance each."""
        k, shape = self.num_classes, self.input_shape
        if len(shape) == 3 and shape[1] > 1 and shape[2] > 1:
            c, h, w = shape
            low = torch.randn((k, c, min(h, 4), min(w, 4)), generator=generator)
            protos = torch.nn.functional.interpolate(
                low, size=(h, w), mode="bilinear", align_corners=False
            )
        else:
            protos = torch.randn((k, *shape), generator=generator)
        flat = protos.reshape(k, -1)
        flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
        return flat.reshape(k, *shape)

    def load_raw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _SYNTHETIC_SALT))
        protos = self.prototypes(gen)

        def draw(n: int) -> tuple[Tensor, Tensor]:
            y = torch.randint(self.num_classes, (n,), generator=gen)
            x = protos[y] + self.noise_std * torch.randn((n, *self.input_shape), generator=gen)
            return x, y

        x_train, y_train = draw(self.num_samples)
        x_test, y_test = draw(self.num_test_samples)
        return x_train, y_train, x_test, y_test

    def preprocess(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        if self.normalize:
            x = x / math.sqrt(1.0 + self.noise_std**2)
        return x
