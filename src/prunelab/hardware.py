"""Hardware profiles (``conf/hardware/*.yaml``): whether this machine can run a profile, and
why a pruning choice will not make the model faster on its target.

Shared by ``train`` (checked before training) and ``measure`` (checked before timing).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from prunelab.errors import ConfigError
from prunelab.schemas import RUNTIMES

#: Deployment targets, and what kind of sparsity runs faster there.
TARGETS = ("cpu", "edge_cpu", "gpu", "gpu_2to4")
#: The memory layouts a network can train in (``hardware.memory_format``): PyTorch's default
#: NCHW, or NHWC, which oneDNN's CPU convolutions (and tensor-core GPUs) run faster.
MEMORY_FORMATS = ("contiguous", "channels_last")


def check_hardware(hw: DictConfig, name: str) -> None:
    """A GPU profile needs a CUDA GPU; ``gpu_2to4`` one with semi-structured sparse support."""
    target = str(hw.get("target", "cpu"))
    if target not in TARGETS:
        raise ConfigError(f"hardware.target={target!r}; allowed: {', '.join(TARGETS)}")
    runtime = hw.get("runtime", "eager")
    if runtime not in RUNTIMES:
        raise ConfigError(f"hardware.runtime={runtime!r}; allowed: {', '.join(RUNTIMES)}")
    memory_format(hw)
    if hw.accelerator != "gpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"hardware={name} but no CUDA GPU is available here; allowed: "
                          f"hardware=cpu or hardware=edge_cpu")
    if target == "gpu_2to4" and torch.cuda.get_device_capability() < (8, 0):
        cap = ".".join(map(str, torch.cuda.get_device_capability()))
        raise ConfigError(f"hardware=gpu_2to4 needs a GPU with semi-structured sparse support "
                          f"(compute capability >= 8.0); this {torch.cuda.get_device_name()} has "
                          f"{cap}")


def memory_format(hw: DictConfig) -> str:
    """``hardware.memory_format`` (default contiguous), checked against :data:`MEMORY_FORMATS`."""
    fmt = str(hw.get("memory_format") or "contiguous")
    if fmt not in MEMORY_FORMATS:
        raise ConfigError(f"hardware.memory_format={fmt!r}; allowed: {', '.join(MEMORY_FORMATS)}")
    return fmt


def to_memory_format(net: Any, hw: DictConfig) -> None:
    """Lay the 4-D parameters of ``net`` out as ``hardware.memory_format`` says, in place (the
    same Parameter objects, so masks and optimizers bound later or earlier still see them); the
    convolutions' outputs then follow. Values are unchanged: the layout only."""
    if memory_format(hw) == "channels_last":
        import torch

        net.to(memory_format=torch.channels_last)


def job_threads(cfg: DictConfig) -> int | None:
    """Torch threads for this job: ``hardware.threads`` if set; under the joblib launcher the
    cores split between the jobs that run at once (no oversubscription); else None (default)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    if cfg.hardware.get("threads"):
        return int(cfg.hardware.threads)
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return None
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cpus = os.cpu_count() or 1
    n = int(launcher.get("n_jobs") or -1)
    parallel = min(cpus, n) if n > 0 else max(1, cpus + 1 + n)  # joblib: -1 = all cores
    return max(1, cpus // parallel)


def speedup_warnings(method: Any, sparsity: float, target: str) -> list[str]:
    """Why the chosen pruning will not make the model faster on ``target`` (empty if it can)."""
    if method.is_dense or sparsity == 0:
        return []
    g = method.granularity
    if target in ("cpu", "edge_cpu"):
        if g == "unstructured" and sparsity < 0.9:
            return [f"unstructured sparsity={sparsity:g} will not run faster on hardware={target}: "
                    f"dense kernels skip no zeros and the CSR kernel pays off only near 90%+ "
                    f"on large Linear layers; for speed use pruner=structured (then compaction)"]
        if g == "nm":
            return [f"N:M sparsity has no CPU kernel: it saves no time on hardware={target}; it "
                    f"runs faster only on GPUs with semi-structured support (hardware=gpu_2to4)"]
    if target == "gpu" and g == "unstructured":
        return [f"unstructured sparsity={sparsity:g} will not run faster on GPU dense kernels; "
                f"use pruner=nm with hardware=gpu_2to4, or pruner=structured"]
    if target == "gpu_2to4" and not (g == "nm" and (method.n, method.m) == (2, 4)):
        return ["hardware=gpu_2to4 speeds up 2:4 sparsity only: use pruner=nm pruner.n=2 "
                "pruner.m=4"]
    return []


def two_four_warnings(net: Any, target: str) -> list[str]:
    """``gpu_2to4``: the Linear layers that semi-structured kernels cannot take (both dimensions
    must be multiples of 16); a warning when none can."""
    if target != "gpu_2to4":
        return []
    from torch import nn

    from prunelab.compress.semi_structured import DIM_MULTIPLE, shape_reason

    linears = {n: tuple(m.weight.shape) for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    if any(shape_reason(r, c) is None for r, c in linears.values()):
        return []
    shapes = ", ".join(f"{n} {r}x{c}" for n, (r, c) in linears.items()) or "none"
    return [f"hardware=gpu_2to4: no Linear layer has both dimensions multiples of {DIM_MULTIPLE} "
            f"({shapes}), so none can run as 2:4 on sparse tensor cores; choose layer widths "
            f"that are (e.g. model.hidden=[512,256])"]
