"""The options of ``measure`` and ``export`` (their Hydra schemas), and their checks.

Every check here runs before a run is loaded or anything is timed or written, so a bad value is
answered at once, in one line (:class:`DeployError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunelab.config import ExportConf, MeasureConf  # noqa: F401  (the schemas, re-exported)
from prunelab.runs import RunError

#: measure's ``sparse_layers``: sparse kernels where they measured faster, or on every eligible layer
SPARSE_LAYERS = ("measured", "all")
#: measure's ``memory_format`` for the float variants of conv nets on the CPU: the faster of the
#: two (timed), or one of them
MEMORY_FORMATS = ("measured", "contiguous", "channels_last")
EXPORT_FORMATS = ("onnx", "executorch")
EXPORT_QUANTIZE = ("none", "int8")
#: Deployment targets whose variants run on a CUDA GPU.
GPU_TARGETS = ("gpu", "gpu_2to4")
#: The hardware profiles (the ``hardware`` config group).
PROFILES = Path(__file__).resolve().parents[1] / "conf" / "hardware"


class DeployError(RunError):
    """Bad input to measure / export (one-line message)."""


def check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise DeployError(f"{key}={value!r}; allowed: {', '.join(allowed)}")


def _at_least(conf: Any, key: str, low: float, optional: bool = False) -> None:
    value = getattr(conf, key)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        more = " (or null)" if optional else ""
        raise DeployError(f"{key}={value!r} must be a number >= {low:g}{more}")


def _check_common(conf: Any) -> None:
    sizes = conf.batch_sizes
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise DeployError(f"batch_sizes={list(sizes or [])} must be integers >= 1")
    _at_least(conf, "runs", 1)
    _at_least(conf, "threads", 1, optional=True)


def hardware_profile(hardware: Any, name: str | None = None
                     ) -> tuple[str | None, DictConfig | None]:
    """(name, profile) of ``hardware``: ``None`` (no profile), a profile's name (read from
    ``conf/hardware/<name>.yaml``) or the profile itself, as Hydra composed it (``name``: the
    option chosen; default: its ``target``)."""
    if hardware is None:
        return None, None
    if isinstance(hardware, str):
        path = PROFILES / f"{hardware}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
            raise DeployError(f"hardware={hardware!r}; known: {', '.join(known)}")
        return hardware, OmegaConf.load(path)
    if not isinstance(hardware, (Mapping, DictConfig)):
        raise DeployError(f"hardware={hardware!r}; allowed: a profile name or a profile")
    profile = OmegaConf.create(OmegaConf.to_container(hardware, resolve=True)
                               if isinstance(hardware, DictConfig) else dict(hardware))
    return name or str(profile.get("target", "cpu")), profile


def apply_profile(conf: Any, name: str | None = None) -> str:
    """Fill ``threads`` and ``batch_sizes`` from ``conf.hardware`` (a conf/hardware profile, see
    :func:`hardware_profile`) where they are not set, and return its deployment target (``cpu``
    without a profile). A GPU profile without a CUDA GPU (or, for ``gpu_2to4``, one without
    semi-structured support) is a DeployError."""
    from prunelab.errors import ConfigError
    from prunelab.hardware import check_hardware

    name, hw = hardware_profile(conf.hardware, name)
    target = "cpu"
    if hw is not None:
        try:
            check_hardware(hw, name)
        except ConfigError as exc:
            raise DeployError(str(exc)) from None
        target = str(hw.get("target", "cpu"))
        threads, sizes = hw.get("threads"), hw.get("batch_sizes")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise DeployError(f"hardware.threads={threads!r} must be an integer >= 1 (or null)")
        if sizes is not None and (isinstance(sizes, str) or not hasattr(sizes, "__iter__")):
            raise DeployError(f"hardware.batch_sizes={sizes!r} must be a list of integers >= 1")
        if conf.threads is None and threads:
            conf.threads = threads
        if conf.batch_sizes is None and sizes:
            conf.batch_sizes = list(sizes)
    if conf.batch_sizes is None:
        conf.batch_sizes = [1, 64]
    return target


def check_measure_options(conf: Any, target: str, name: str | None) -> None:
    """Every value of a measure conf that can be checked without the run (after
    :func:`apply_profile`); what runs on the CPU only is refused on a GPU profile, not
    dropped."""
    check_choice("sparse_layers", conf.sparse_layers, SPARSE_LAYERS)
    check_choice("memory_format", conf.memory_format, MEMORY_FORMATS)
    _check_common(conf)
    _at_least(conf, "warmup", 0)
    _at_least(conf, "rounds", 1)
    _at_least(conf, "calibration_batches", 1)
    qat = conf.qat_epochs
    if isinstance(qat, bool) or not isinstance(qat, int) or qat < 0:
        raise DeployError(f"qat_epochs={qat!r} must be an integer >= 0 (0: no int8_qat variant)")
    _at_least(conf, "qat_batches", 1, optional=True)
    _at_least(conf, "eval_batches", 1, optional=True)
    if conf.qat_epochs and not conf.qat_lr > 0:
        raise DeployError(f"qat_lr={conf.qat_lr!r} must be a number > 0")
    if target in GPU_TARGETS:
        cpu_only = ["onnx=true"] if conf.onnx else []
        cpu_only += ["executorch=true"] if conf.executorch else []
        cpu_only += [f"qat_epochs={conf.qat_epochs}"] if conf.qat_epochs else []
        if conf.memory_format == "channels_last":
            cpu_only.append(f"memory_format={conf.memory_format}")
        if target == "gpu" and conf.sparse_layers != "measured":
            cpu_only.append(f"sparse_layers={conf.sparse_layers}")
        if cpu_only:
            raise DeployError(f"{cpu_only[0]} runs on the CPU only (onnxruntime, int8 QAT, CSR, "
                              f"channels_last, ExecuTorch), not on hardware={name}; allowed "
                              f"there: onnx=false, executorch=false, qat_epochs=0, memory_format=measured|contiguous"
                              + (", sparse_layers=measured" if target == "gpu" else ""))
    if conf.onnx:
        need_onnxruntime("onnx=true")


def check_export_options(conf: Any) -> None:
    """Every value of an export conf that can be checked without the run."""
    check_choice("format", conf.format, EXPORT_FORMATS)
    check_choice("quantize", conf.quantize, EXPORT_QUANTIZE)
    _check_common(conf)
    _at_least(conf, "atol", 0)
    if conf.format == "executorch":
        need_executorch("format=executorch")
    else:
        need_onnxruntime("format=onnx")


def need_onnxruntime(what: str) -> None:
    """A DeployError naming ``what`` when onnx or onnxruntime is not installed."""
    from prunelab.compress.onnx_model import onnxruntime_available

    if not onnxruntime_available():
        raise DeployError(f"{what} needs onnx and onnxruntime: pip install 'prunelab[deploy]'")


def need_executorch(what: str) -> None:
    """A DeployError naming ``what`` when ExecuTorch is not installed."""
    from prunelab.compress.executorch_model import INSTALL, executorch_available

    if not executorch_available():
        raise DeployError(f"{what} needs ExecuTorch: {INSTALL}")
