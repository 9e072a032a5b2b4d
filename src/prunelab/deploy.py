"""From a pruned run to a deployable model: variants, measured side by side, and ONNX export.

``python -m prunelab.measure run=<run dir>`` builds, from the run's best checkpoint:

- ``dense``: the pruned network as trained (zeros stored, dense kernels);
- ``sparse``: Linear layers through the CSR kernel where measurement says it is faster
  (:func:`prunelab.compress.sparse.sparsify`; only when some Linear is at least half zeros);
- ``compact``: dead channels removed (:func:`prunelab.compress.compact.compact`; only when the
  run's structured pruning left whole channels at zero);
- ``int8``: post-training int8 quantization of the compact (else the dense) network;
- ``int8_qat`` (``qat_epochs=N``): the same after N epochs of quantization-aware fine-tuning
  with the pruned weights held at zero.

and measures each at the same time, in alternating order: latency (warm-up, median of at least
``runs`` runs, ``torch.inference_mode``, threads from ``threads``), test accuracy, size on disk of
the file it would ship as. The float variants of conv nets run, at each batch size, in the faster
memory format of contiguous and channels_last (``memory_format``; :func:`choose_memory_format`).

With a GPU profile (``hardware=gpu`` or ``hardware=gpu_2to4``) the variants run on the CUDA GPU
instead: ``dense`` (float32), ``compact``, the half-precision model the profile deploys
(``bf16``; ``fp16`` for ``gpu_2to4``) and, for ``gpu_2to4``, ``2to4``: the 2:4-pruned Linear
layers as semi-structured sparse tensors (:func:`prunelab.compress.to_semi_structured`). The CSR
and int8 variants are CPU kernels and are not built there.

``python -m prunelab.export run=<run dir> format=onnx [compact=true]
[quantize=int8]`` writes an ONNX file, checks it with onnxruntime against PyTorch and prints its
size and latency beside the dense model's.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from prunelab.data.loader import iter_batches
from prunelab.measure.latency import placement, time_alternating, time_in_turn
from prunelab.runs import RunError, load_run, locate_checkpoint


class DeployError(RunError):
    """Bad input to measure / export (one-line message)."""


#: measure's ``sparse_layers``: sparse kernels where they measured faster, or on every eligible layer
SPARSE_LAYERS = ("measured", "all")
#: measure's ``memory_format`` for the float variants of conv nets on the CPU: the faster of the
#: two (timed), or one of them
MEMORY_FORMATS = ("measured", "contiguous", "channels_last")


@dataclass
class MeasureConf:
    run: Optional[str] = None  # a prunelab.train run directory or checkpoint
    checkpoint: str = "best"  # best | last
    hardware: Optional[str] = None  # a hardware profile (cpu, edge_cpu, gpu, gpu_2to4): device, threads, batch sizes
    batch_sizes: Optional[list[int]] = None  # default: the profile's, else [1, 64]
    runs: int = 50  # timed runs per batch size (median), after warmup
    warmup: int = 10
    rounds: int = 3  # the variants are timed in turn, this many times (A B C A B C ...)
    threads: Optional[int] = None  # torch threads (null: PyTorch's default)
    sparse: bool = True  # try the sparse path for sparse Linear layers (CSR on CPU, 2:4 on gpu_2to4)
    sparse_layers: str = "measured"  # measured: sparse where timed faster | all: every eligible layer
    quantize: bool = True  # add the int8 variant
    calibration_batches: int = 8  # static quantization (conv nets)
    qat_epochs: int = 0  # > 0: add an int8_qat variant, fine-tuned quantization-aware first
    qat_lr: float = 1e-4
    qat_batches: Optional[int] = 200  # training batches per QAT epoch (null: all)
    eval_batches: Optional[int] = None  # test batches for accuracy (null: the whole test set)
    onnx: bool = False  # also time the float variants (dense, compact) exported to onnxruntime
    memory_format: str = "measured"  # conv nets on the CPU: measured | contiguous | channels_last
    out: Optional[str] = None  # output directory (default: <run>/deploy)


@dataclass
class ExportConf:
    run: Optional[str] = None
    checkpoint: str = "best"
    format: str = "onnx"
    compact: bool = False
    quantize: str = "none"  # none | int8
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    runs: int = 50
    threads: Optional[int] = None
    atol: float = 1e-4  # float export: max |onnxruntime - torch|
    out: Optional[str] = None  # default: <run>/export


def parse_args(schema: type, argv: Sequence[str]) -> Any:
    """``key=value`` arguments over a dataclass schema; unknown keys and bad types are one-line
    errors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise DeployError(f"argument {bad[0]!r} is not key=value; allowed keys: "
                          f"{', '.join(schema.__dataclass_fields__)}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(list(argv)))
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise DeployError(f"{first}; allowed keys: {', '.join(schema.__dataclass_fields__)}") \
            from None
    return cfg


# -- loading -----------------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    cfg: Any
    net: nn.Module
    dm: Any
    ckpt: Path
    run_dir: Path
    prunable: list[str]
    input_shape: tuple[int, ...]
    results: dict[str, Any]


def load(run: str | None, checkpoint: str = "best") -> LoadedRun:
    from prunelab.pruning import Pruner

    ckpt = locate_checkpoint(run, checkpoint)
    cfg, net, dm = load_run(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    pcfg = cfg.get("pruner") or {}
    prunable = list(Pruner(include=pcfg.get("include"), exclude=pcfg.get("exclude"))
                    .resolve(net))
    res_path = run_dir / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    return LoadedRun(cfg, net.float().cpu().eval(), dm, ckpt, run_dir, prunable,
                     tuple(dm.input_shape), results)


def structured_report(run: LoadedRun) -> tuple[nn.Module, Any]:
    """The compact network and its report; a DeployError when nothing can be removed."""
    from prunelab.compress.compact import compact

    small, report = compact(run.net, run.input_shape)
    if report.params_after >= report.params_before:
        zeros = sum(int((dict(run.net.named_parameters())[n] == 0).sum()) for n in run.prunable)
        kind = run.results.get("granularity") or run.cfg.get("pruner", {}).get("granularity")
        raise DeployError(
            f"run={str(run.run_dir)!r} has no whole channel at zero ({zeros} zero weights, "
            f"granularity={kind}): compaction removes nothing; prune channels with "
            f"pruner=structured, or use the sparse (CSR) path of python -m prunelab.measure for "
            f"unstructured sparsity")
    return small, report


# -- measuring ---------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(net: nn.Module, loader, max_batches: int | None = None) -> float:
    correct = total = 0
    device, dtype = placement(net)
    with torch.inference_mode():
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            pred = net(x.to(device, dtype)).argmax(1)
            correct += int((pred.cpu() == y.cpu()).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def apply_profile(conf: Any) -> str:
    """Fill ``threads`` and ``batch_sizes`` from ``conf.hardware`` (a conf/hardware profile) and
    return its deployment target (``cpu`` without a profile). A GPU profile without a CUDA GPU
    (or, for ``gpu_2to4``, one without semi-structured support) is a DeployError."""
    from omegaconf import OmegaConf

    from prunelab.train import CONF_DIR, ConfigError, check_hardware, known_options

    target = "cpu"
    if conf.hardware is not None:
        path = CONF_DIR / "hardware" / f"{conf.hardware}.yaml"
        if not path.is_file():
            raise DeployError(f"hardware={conf.hardware!r}; known: "
                              f"{', '.join(known_options('hardware'))}")
        hw = OmegaConf.load(path)
        try:
            check_hardware(hw, conf.hardware)
        except ConfigError as exc:
            raise DeployError(str(exc)) from None
        target = str(hw.get("target", "cpu"))
        if conf.threads is None and hw.get("threads"):
            conf.threads = int(hw.threads)
        if conf.batch_sizes is None:
            conf.batch_sizes = list(hw.batch_sizes)
    if conf.batch_sizes is None:
        conf.batch_sizes = [1, 64]
    return target


def _check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise DeployError(f"{key}={value!r}; allowed: {', '.join(allowed)}")


def file_size(obj: Any, path: Path) -> int:
    torch.save(obj, path)
    return path.stat().st_size


def measure_run(conf: Any) -> dict[str, Any]:
    """Build the variants of a run and measure them side by side (see the module doc)."""
    from prunelab.compress.compact import CompactionError, compact
    from prunelab.compress.quantize import count_int8_zeros, quantize_int8, save_int8_sparse
    from prunelab.compress.sparse import sparsify
    from prunelab.measure import count_macs, save_sparse_state_dict

    target = apply_profile(conf)
    gpu = target in ("gpu", "gpu_2to4")
    _check_choice("sparse_layers", conf.sparse_layers, SPARSE_LAYERS)
    _check_choice("memory_format", conf.memory_format, MEMORY_FORMATS)
    if gpu:  # what runs on the CPU only is refused, not dropped
        cpu_only = (["onnx=true"] if conf.onnx else []) \
            + ([f"qat_epochs={conf.qat_epochs}"] if conf.qat_epochs else []) \
            + ([f"memory_format={conf.memory_format}"]
               if conf.memory_format == "channels_last" else []) \
            + ([f"sparse_layers={conf.sparse_layers}"]
               if target == "gpu" and conf.sparse_layers != "measured" else [])
        if cpu_only:
            raise DeployError(f"{cpu_only[0]} runs on the CPU only (onnxruntime, int8 QAT, CSR, "
                              f"channels_last), not on hardware={conf.hardware}; allowed there: "
                              f"onnx=false, qat_epochs=0, memory_format=measured|contiguous"
                              + (", sparse_layers=measured" if target == "gpu" else ""))
    if conf.onnx:
        _need_onnxruntime("onnx=true")
    if not conf.batch_sizes or any(b < 1 for b in conf.batch_sizes):
        raise DeployError(f"batch_sizes={list(conf.batch_sizes)} must be integers >= 1")
    if conf.runs < 1:
        raise DeployError(f"runs={conf.runs} must be >= 1")
    run = load(conf.run, conf.checkpoint)
    out = Path(conf.out) if conf.out else run.run_dir / "deploy"
    out.mkdir(parents=True, exist_ok=True)
    run.dm.setup("fit")
    run.dm.setup("test")
    macs = count_macs(run.net, run.input_shape)
    models: dict[str, nn.Module] = {"dense": copy.deepcopy(run.net).cuda() if gpu else run.net}
    info: dict[str, dict[str, Any]] = {"dense": {
        "file": "model_dense.pt", "bytes": file_size(run.net.state_dict(), out / "model_dense.pt"),
        "macs": macs["dense"]}}
    info["dense"]["sparse_file_bytes"] = _sparse_bytes(run.net, out, save_sparse_state_dict)
    if conf.sparse and not gpu:
        sp, sparse = sparsify(copy.deepcopy(run.net), batch_sizes=conf.batch_sizes,
                              threads=conf.threads, force=conf.sparse_layers == "all",
                              input_shape=run.input_shape, runs=conf.runs, warmup=conf.warmup,
                              rounds=conf.rounds)
        if sparse.layers:
            models["sparse"] = sp
            info["sparse"] = {"file": "model_sparse.pt", "bytes": info["dense"]["sparse_file_bytes"],
                              "macs": macs["effective"],
                              **sparse.as_dict()}
    base = run.net
    try:
        small, report = compact(run.net, run.input_shape)
    except CompactionError:
        small, report = None, None
    if report is not None and report.params_after < report.params_before:
        models["compact"] = copy.deepcopy(small).cuda() if gpu else small
        base = small
        info["compact"] = {"file": "model_compact.pt",
                           "bytes": file_size(small.state_dict(), out / "model_compact.pt"),
                           "macs": count_macs(small, run.input_shape)["dense"],
                           "compaction": report.as_dict()}
    if gpu:
        _gpu_variants(conf, run, base, target, models, info, out)
    if conf.quantize and not gpu:
        calib = [x for i, (x, _) in zip(range(conf.calibration_batches),
                                        iter_batches(run.dm.train_dataloader()))]
        q, mode = quantize_int8(base, run.input_shape, calib)
        models["int8"] = q
        info["int8"] = {"file": "model_int8_sparse.pt", "mode": mode,
                        "of": "compact" if base is not run.net else "dense",
                        "bytes": save_int8_sparse(q, out / "model_int8_sparse.pt"),
                        "int8_zeros": count_int8_zeros(q)}
    if conf.qat_epochs and not gpu:
        from prunelab.compress.quantize import qat_int8

        batches = [b for i, b in zip(range(conf.qat_batches or 10**9),
                                              iter_batches(run.dm.train_dataloader()))]
        q = qat_int8(base, run.input_shape, batches, epochs=int(conf.qat_epochs), lr=conf.qat_lr)
        models["int8_qat"] = q
        info["int8_qat"] = {"file": "model_int8_qat_sparse.pt", "mode": "qat",
                            "of": "compact" if base is not run.net else "dense",
                            "qat_epochs": int(conf.qat_epochs),
                            "bytes": save_int8_sparse(q, out / "model_int8_qat_sparse.pt"),
                            "int8_zeros": count_int8_zeros(q)}
    if conf.onnx:  # exported and checked first, so a bad export fails before the long timing
        floats = {k: models[k] for k in ("dense", "compact") if k in models}
        sessions, diffs = onnx_sessions(floats, run.input_shape, conf.threads)
    if not gpu:
        choose_memory_format(conf, models, info, run.input_shape)
    latency = time_alternating(models, run.input_shape, conf.batch_sizes, conf.runs, conf.warmup,
                               conf.rounds, None if gpu else conf.threads)
    if conf.onnx:  # timed after PyTorch (the sessions' worker threads do not spin when idle)
        ort_lat = time_sessions(sessions, run.input_shape, conf.batch_sizes, conf.runs,
                                conf.warmup, conf.rounds)
        for k in sessions:
            info[k]["onnxruntime_latency_ms"] = ort_lat[k]
            info[k]["onnxruntime_max_abs_diff"] = diffs[k]
    loader = run.dm.test_dataloader()
    for k, m in models.items():
        info[k]["latency_ms"] = latency[k]
        info[k]["test_acc"] = accuracy(m, loader, conf.eval_batches)
    dense = info["dense"]
    for k, v in info.items():
        v["speedup"] = {b: dense["latency_ms"][b] / v["latency_ms"][b] for b in v["latency_ms"]}
        if "onnxruntime_latency_ms" in v:
            v["onnxruntime_speedup"] = {b: dense["onnxruntime_latency_ms"][b] / t
                                        for b, t in v["onnxruntime_latency_ms"].items()}
        v["size_ratio"] = dense["bytes"] / v["bytes"]
        if "macs" in v:
            v["macs_reduction"] = dense["macs"] / max(v["macs"], 1)
    result = {"run": str(run.run_dir), "checkpoint": str(run.ckpt),
              "threads": None if gpu else conf.threads or torch.get_num_threads(), "target": target,
              "device": torch.cuda.get_device_name() if gpu else "cpu", "batch_sizes": list(conf.batch_sizes),
              "runs": conf.runs, "rounds": conf.rounds, "variants": info,
              "model": run.results.get("model"), "pruner": run.results.get("pruner"),
              "sparsity": run.results.get("sparsity", {}).get("global")}
    (out / "measure.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"wrote {out / 'measure.json'}")
    return result


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
    the contiguous and the channels_last model, timed in turn at that batch size. Replaces
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
                lat = time_alternating({"contiguous": m, "channels_last": cl}, input_shape,
                                       sizes, conf.runs, conf.warmup, conf.rounds, conf.threads)
                info[k]["memory_format_ms"] = lat
                use = [b for b in sizes
                       if lat["channels_last"][f"batch_{b}"] < lat["contiguous"][f"batch_{b}"]]
            if use:
                cl.batches = frozenset(use)
                models[k] = cl
        info[k]["memory_format"] = {f"batch_{b}": "channels_last" if b in use else "contiguous"
                                    for b in sizes}


def _gpu_variants(conf: Any, run: LoadedRun, base: nn.Module, target: str,
                  models: dict[str, nn.Module], info: dict[str, dict[str, Any]], out: Path) -> None:
    """The half-precision model of a GPU target and, for ``gpu_2to4``, its 2:4 semi-structured
    version (the layers left dense are listed with the reason)."""
    from prunelab.compress.semi_structured import to_semi_structured

    of = "compact" if base is not run.net else "dense"
    half_name, dtype = ("fp16", torch.float16) if target == "gpu_2to4" else ("bf16", torch.bfloat16)
    half = copy.deepcopy(base).to("cuda", dtype).eval()
    models[half_name] = half
    info[half_name] = {"file": f"model_{half_name}.pt", "of": of, "macs": info[of]["macs"],
                       "bytes": file_size(half.state_dict(), out / f"model_{half_name}.pt")}
    if target != "gpu_2to4" or not conf.sparse:
        return
    example = torch.randn(64, *run.input_shape, generator=torch.Generator().manual_seed(0))
    measured = conf.sparse_layers == "measured"
    try:
        sparse, report = to_semi_structured(base, example, dtype=dtype,
                                            batch_sizes=conf.batch_sizes if measured else None,
                                            runs=conf.runs, warmup=conf.warmup, rounds=conf.rounds)
    except RuntimeError as exc:
        raise DeployError(str(exc).splitlines()[0]) from None
    if not report.converted:
        print(f"prunelab: warning: hardware=gpu_2to4 but no Linear layer runs as 2:4 "
              f"({'; '.join(f'{k}: {v}' for k, v in report.skipped.items())})", file=sys.stderr)
        info[half_name]["semi_structured_skipped"] = report.skipped
        info[half_name]["semi_structured_timings"] = report.timings
        return
    models["2to4"] = sparse
    info["2to4"] = {"file": "model_2to4.pt", "of": half_name, "macs": info[of]["macs"],
                    "bytes": file_size(sparse.state_dict(), out / "model_2to4.pt"),
                    "converted": report.converted, "skipped": report.skipped,
                    "timings": report.timings,
                    "max_abs_diff": report.max_abs_diff}


def _sparse_bytes(net: nn.Module, out: Path, save) -> int:
    path = out / "model_sparse.pt"
    save(net.state_dict(), path)
    return path.stat().st_size


def print_table(result: dict[str, Any]) -> None:
    bs = result["batch_sizes"]
    head = ["variant", "test acc", "size", "x smaller"] + [f"ms @{b}" for b in bs] + \
        [f"speedup @{b}" for b in bs] + ["MACs /"]
    lines = [" | ".join(head)]
    for k, v in result["variants"].items():
        row = [k, f"{100 * v['test_acc']:.2f}", f"{v['bytes'] / 1e3:.1f} KB", f"{v['size_ratio']:.1f}"]
        row += [f"{v['latency_ms'][f'batch_{b}']:.3f}" for b in bs]
        row += [f"{v['speedup'][f'batch_{b}']:.2f}" for b in bs]
        row += [f"{v['macs_reduction']:.2f}" if "macs_reduction" in v else "-"]
        lines.append(" | ".join(row))
    where = (f"on {result['device']}" if result.get("device", "cpu") != "cpu"
             else f"{result['threads']} threads")
    print(f"run {result['run']} ({where})")
    print("\n".join(lines))
    sparse = result["variants"].get("sparse")
    if sparse and "layers" in sparse:
        print(sparse_summary(sparse))
    formats = []
    for k, v in result["variants"].items():
        if "memory_format" in v:
            fmt, ms = v["memory_format"], v.get("memory_format_ms")
            speed = (" (" + "/".join(f"{ms['contiguous'][b] / ms['channels_last'][b]:.2f}x"
                                     for b in fmt) + ")") if ms else ""
            formats.append(f"{k} {'/'.join(fmt.values())}{speed}")
    if formats:
        print(f"memory format @{'/'.join(str(b) for b in bs)} (channels_last speed vs "
              f"contiguous): " + "; ".join(formats))
    for k, v in result["variants"].items():
        if "onnxruntime_latency_ms" in v:
            print(f"{k} on onnxruntime: " + ", ".join(
                f"{v['onnxruntime_latency_ms'][f'batch_{b}']:.3f} ms @{b} "
                f"(speedup {v['onnxruntime_speedup'][f'batch_{b}']:.2f})" for b in bs))


def sparse_summary(sparse: dict[str, Any]) -> str:
    """One line: which Linear layers the ``sparse`` variant runs on CSR, the speedup of each layer
    alone at each batch size, and the whole model's when it was checked."""
    def speed(values: Any) -> str:
        return "/".join(f"{v:.2f}x" for v in values)

    layers = sparse["layers"]
    on = [f"{c['name']} ({speed(c['speedup'].values())})" for c in layers if c["sparse"]]
    off = [f"{c['name']} ({speed(c['speedup'].values())})" for c in layers if not c["sparse"]]
    line = ("sparse: CSR on " + (", ".join(on) if on else "no layer")
            + ("; dense kept: " + ", ".join(off) if off else "") + " (each layer alone)")
    if "model_speedup" in sparse:
        line += f"; whole model {speed(sparse['model_speedup'].values())}"
    if sparse.get("reverted"):
        faster = [c["name"] for c in layers if all(v > 1 for v in c["speedup"].values())]
        line += (f": not faster at every batch size with {', '.join(faster)} on CSR, so every "
                 "layer stays dense "
                 "(the sparse variant is the dense model)")
    return line


# -- onnxruntime -------------------------------------------------------------------------------------
def onnxruntime_available() -> bool:
    from importlib.util import find_spec

    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


def _need_onnxruntime(what: str) -> None:
    if not onnxruntime_available():
        raise DeployError(f"{what} needs onnx and onnxruntime: pip install 'prunelab[deploy]'")


def export_onnx(net: nn.Module, input_shape: Sequence[int], path: Any) -> None:
    """``net`` as ONNX (opset 17, dynamic batch) to ``path`` (a file name or a binary buffer)."""
    import warnings

    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), path, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                 "logits": {0: "batch"}},
                          opset_version=17)


def ort_session(model: Any, threads: int | None):
    """An onnxruntime CPU session of ``model`` (a file name or the ONNX bytes) whose idle
    worker threads do not spin (they would take the cores from whatever runs next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def time_sessions(sessions: dict[str, Any], input_shape: Sequence[int], batch_sizes: Sequence[int],
                  runs: int, warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median latency (ms) of onnxruntime sessions per batch size, timed in turn (A B A B ...)
    like :func:`~prunelab.measure.latency.time_alternating`."""
    out: dict[str, dict[str, float]] = {k: {} for k in sessions}
    for b in batch_sizes:
        feed = {"input": torch.randn(int(b), *input_shape,
                                     generator=torch.Generator().manual_seed(b)).numpy()}
        calls = {k: functools.partial(sess.run, None, feed) for k, sess in sessions.items()}
        for k, ms in time_in_turn(calls, runs, warmup, rounds).items():
            out[k][f"batch_{b}"] = ms
    return out


def onnx_sessions(models: dict[str, nn.Module], input_shape: Sequence[int], threads: int | None,
                  atol: float = 1e-4) -> tuple[dict[str, Any], dict[str, float]]:
    """Each model exported to ONNX and loaded in onnxruntime, its outputs checked against
    PyTorch on a random batch (max |diff| above ``atol`` is a DeployError): the sessions and
    the differences."""
    import io

    sessions, diffs = {}, {}
    x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(1))
    for k, m in models.items():
        buf = io.BytesIO()
        export_onnx(m, input_shape, buf)
        sessions[k] = ort_session(buf.getvalue(), threads)
        with torch.inference_mode():
            ref = m(x).numpy()
        diffs[k] = float(abs(sessions[k].run(None, {"input": x.numpy()})[0] - ref).max())
        if diffs[k] > atol:
            raise DeployError(f"the ONNX export of {k} differs from PyTorch by {diffs[k]:.2e} "
                              f"(more than {atol:g}); measure without it: onnx=false")
    return sessions, diffs


def onnxruntime_latency(models: dict[str, nn.Module], input_shape: Sequence[int],
                        batch_sizes: Sequence[int], runs: int, warmup: int, rounds: int,
                        threads: int | None, atol: float = 1e-4) -> dict[str, dict[str, Any]]:
    """:func:`onnx_sessions` of the models, timed on onnxruntime in turn: ``{name:
    {"latency_ms", "max_abs_diff"}}``."""
    sessions, diffs = onnx_sessions(models, input_shape, threads, atol)
    lat = time_sessions(sessions, input_shape, batch_sizes, runs, warmup, rounds)
    return {k: {"latency_ms": lat[k], "max_abs_diff": diffs[k]} for k in models}


# -- export ------------------------------------------------------------------------------------------
def export_run(conf: Any) -> dict[str, Any]:
    """Write an ONNX file of the run, validate it with onnxruntime, measure it."""
    import warnings

    _check_choice("format", conf.format, ("onnx",))
    _check_choice("quantize", conf.quantize, ("none", "int8"))
    _need_onnxruntime("format=onnx")
    run = load(conf.run, conf.checkpoint)
    net = run.net
    if conf.compact:
        net, _ = structured_report(run)
    out = Path(conf.out) if conf.out else run.run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    stem = "model" + ("_compact" if conf.compact else "") + ("_int8" if conf.quantize == "int8" else "")
    fp32 = out / f"{stem.replace('_int8', '')}.onnx"
    x = torch.randn(4, *run.input_shape, generator=torch.Generator().manual_seed(0))
    export_onnx(net, run.input_shape, str(fp32))
    path = fp32
    if conf.quantize == "int8":
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = out / f"{stem}.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process first
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    # PyTorch first: onnxruntime's idle worker threads would otherwise share the cores
    lat_dense = time_alternating({"dense": run.net}, run.input_shape, conf.batch_sizes, conf.runs,
                                 10, 1, conf.threads)["dense"]
    sess = ort_session(str(path), conf.threads)
    with torch.inference_mode():
        ref = run.net(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    if conf.quantize == "none" and diff > conf.atol:
        raise DeployError(f"the ONNX model differs from PyTorch by {diff:.2e} > atol={conf.atol}")
    lat_onnx = time_sessions({"onnx": sess}, run.input_shape, conf.batch_sizes, conf.runs, 10,
                             1)["onnx"]
    dense_bytes = file_size(run.net.state_dict(), out / "model_dense.pt")
    result = {"run": str(run.run_dir), "onnx": str(path), "bytes": path.stat().st_size,
              "dense_bytes": dense_bytes, "max_abs_diff": diff, "argmax_agreement": agree,
              "latency_ms": lat_onnx, "dense_latency_ms": lat_dense, "compact": conf.compact,
              "quantize": conf.quantize}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} KB; dense PyTorch weights "
          f"{dense_bytes / 1e3:.1f} KB)")
    print(f"onnxruntime vs PyTorch: max |diff| {diff:.2e}, same class on {100 * agree:.1f}% of the "
          f"check batch")
    for b in conf.batch_sizes:
        k = f"batch_{b}"
        print(f"batch {b}: onnxruntime {lat_onnx[k]:.3f} ms, dense PyTorch {lat_dense[k]:.3f} ms")
    return result


def cli(fn, schema: type, argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        fn(parse_args(schema, args))
    except RunError as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        sys.exit(2)
