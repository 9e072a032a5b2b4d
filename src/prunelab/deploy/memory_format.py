"""Memory format of the float conv variants on the CPU: contiguous (NCHW) or channels_last
(NHWC), chosen per batch size by timing both."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.metrics.timing import retime_noisy, time_alternating, warn_noisy


class ChannelsLast(nn.Module):
    """A conv net that runs in the channels_last memory format at the batch sizes in ``batches``
    (weights converted once, each NCHW input converted on the way in, inside the timed forward)
    and as it is at any other batch size."""

    def __init__(self, model: nn.Module, batches: Sequence[int]):
        super().__init__()
        self.model = model
        # sparse (CSR) buffers cannot be deep-copied, and no memory format applies to them: the
        # copy shares them
        shared = {id(t): t for t in model.buffers() if t.layout != torch.strided}
        self.channels_last = copy.deepcopy(model, shared).to(memory_format=torch.channels_last)
        self.batches = frozenset(int(b) for b in batches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[0] in self.batches:
            return self.channels_last(x.contiguous(memory_format=torch.channels_last))
        return self.model(x)


def choose_memory_format(conf: Any, models: dict[str, nn.Module], info: dict[str, dict[str, Any]],
                         input_shape: Sequence[int]) -> None:
    """For each float variant with a Conv2d (int8 ones have their own kernels), the memory format
    it runs in at each batch size: ``conf.memory_format``, or with ``measured`` the faster of
    the contiguous and the channels_last model, timed in turn at that batch size (timings
    disturbed by other work are timed again; a batch size whose timings stay disturbed keeps
    contiguous, the default, recorded in ``info[k]["memory_format_refused"]``). Replaces
    ``models[k]`` with a :class:`ChannelsLast` where that is used (the model itself is not
    converted) and records ``info[k]["memory_format"]`` per batch size. The test accuracy is
    then computed at the loader's batch size, contiguous unless that size was timed in
    channels_last: the same function either way, up to float rounding."""
    sizes = [int(b) for b in conf.batch_sizes]
    for k, m in list(models.items()):
        if k.startswith("int8") or not any(isinstance(x, nn.Conv2d) for x in m.modules()):
            continue
        use: list[int] = []
        if conf.memory_format != "contiguous":
            cl = ChannelsLast(m, sizes)
            use = sizes
            if conf.memory_format == "measured":
                lat = retime_noisy(time_alternating, {"contiguous": m, "channels_last": cl},
                                   input_shape, sizes, conf.runs, conf.warmup, conf.rounds,
                                   conf.threads)
                info[k]["memory_format_ms"] = dict(lat)
                refused = {b: r for v in lat.noisy.values() for b, r in v.items()}
                for b, reason in sorted(refused.items()):
                    warn_noisy(f"memory format of {k} at {b.replace('_', ' ')}", reason,
                               "not chosen on them: contiguous kept")
                if refused:
                    info[k]["memory_format_refused"] = refused
                use = [b for b in sizes if f"batch_{b}" not in refused
                       and lat["channels_last"][f"batch_{b}"] < lat["contiguous"][f"batch_{b}"]]
            if use:
                cl.batches = frozenset(use)
                models[k] = cl
        info[k]["memory_format"] = {f"batch_{b}": "channels_last" if b in use else "contiguous"
                                    for b in sizes}
