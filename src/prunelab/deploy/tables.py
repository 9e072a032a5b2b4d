"""What ``measure`` prints: the variants side by side, and one-line summaries."""

from __future__ import annotations

from typing import Any


def print_table(result: dict[str, Any]) -> None:
    """The variants of a measure result side by side (a variant that is another one, ``same_as``,
    as one cell saying so: no timing, speedup or MACs of its own), then what was chosen per
    variant (CSR layers, memory format) and the onnxruntime timings."""
    bs = result["batch_sizes"]
    head = (["variant", "test acc", "size", "x smaller"] + [f"ms @{b}" for b in bs]
            + [f"speedup @{b}" for b in bs] + ["MACs /"])
    lines = [" | ".join(head)]
    for k, v in result["variants"].items():
        if "same_as" in v:
            lines.append(f"{k} | same as {v['same_as']}"
                         + (": CSR on no layer" if k == "sparse" else "")
                         + " (not timed again, no speedup, no MACs reduction)")
            continue
        if "skipped" in v:  # e.g. a network torch.fx cannot trace: no compact variant
            lines.append(f"{k} | skipped: {v['skipped']}")
            continue
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
        if v.get("runtime") == "onnxruntime":
            line = f"{k} runs on onnxruntime (its ONNX model, {v['onnx_bytes'] / 1e3:.1f} KB)"
            if "onnxruntime_speedup" in v:
                line += ": speedup against dense on onnxruntime " + ", ".join(
                    f"{v['onnxruntime_speedup'][f'batch_{b}']:.2f} @{b}" for b in bs)
            print(line)
        elif "executorch_speedup" in v and k != "et_dense":
            print(f"{k} runs on ExecuTorch (XNNPACK): speedup against et_dense " + ", ".join(
                f"{v['executorch_speedup'][f'batch_{b}']:.2f} @{b}" for b in bs)
                  + (f"; not delegated: {v['not_delegated']}" if v.get("not_delegated") else ""))
        elif "onnxruntime_latency_ms" in v:
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
