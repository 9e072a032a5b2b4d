"""Why compaction's speedup falls short of its MACs reduction on this CPU: one convolution at full
and at half width.

    python scripts/bench_conv_width.py [--threads 2] [--reps 7]

For the 3x3 convolutions of ResNet-20 (16, 32 and 64 channels at 32x32, 16x16 and 8x8) and the
same layer with half the input and output channels (what 50 % channel pruning leaves: 4x fewer
MACs), times ``F.conv2d`` in PyTorch's default layout (NCHW) and in channels_last, at batch 1 and
64. The full and half layers are timed in turn (A B A B ...), ``--reps`` rounds after a warm-up;
medians. Prints, per layer, the best time of each width, the speedup of the half one (4.0 would
follow the MACs) and the arithmetic rate each reaches (GMAC/s), and writes
``scripts/bench_conv_width_results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("bench_conv_width_results.json")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{args.threads} threads, median of {args.reps} rounds\n")
    print("| channels | size | batch | full ms (layout) | half ms (layout) | speedup | "
          "full GMAC/s | half GMAC/s |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in (1, 64):
            for channels, size in ((16, 32), (32, 16), (64, 8)):
                calls, macs = {}, {}
                for width in (channels, channels // 2):
                    x = torch.randn(batch, width, size, size, generator=gen)
                    w = torch.randn(width, width, 3, 3, generator=gen)
                    macs[width] = batch * width * width * 9 * size * size
                    xc = x.contiguous(memory_format=torch.channels_last)
                    wc = w.contiguous(memory_format=torch.channels_last)
                    calls[(width, "NCHW")] = (lambda x=x, w=w: F.conv2d(x, w, padding=1))
                    calls[(width, "channels_last")] = (lambda x=xc, w=wc: F.conv2d(x, w, padding=1))
                runs = 20 if batch == 64 else 200
                times: dict = {k: [] for k in calls}
                for fn in calls.values():
                    for _ in range(10):
                        fn()
                for _ in range(args.reps):
                    for k, fn in calls.items():
                        t = time.perf_counter()
                        for _ in range(runs):
                            fn()
                        times[k].append((time.perf_counter() - t) / runs * 1e3)
                med = {k: statistics.median(v) for k, v in times.items()}
                best = {}
                for width in (channels, channels // 2):
                    layout = min(("NCHW", "channels_last"), key=lambda lay: med[(width, lay)])
                    best[width] = (med[(width, layout)], layout)
                full, half = best[channels], best[channels // 2]
                rate = {wd: macs[wd] / (best[wd][0] * 1e-3) / 1e9 for wd in best}
                rows.append({"channels": channels, "size": size, "batch": batch,
                             "ms": {f"{wd}/{lay}": t for (wd, lay), t in med.items()},
                             "speedup": full[0] / half[0], "gmacs": rate})
                print(f"| {channels} -> {channels // 2} | {size}x{size} | {batch} | "
                      f"{full[0]:.3f} ({full[1]}) | {half[0]:.3f} ({half[1]}) | "
                      f"{full[0] / half[0]:.2f} | {rate[channels]:.1f} | "
                      f"{rate[channels // 2]:.1f} |", flush=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "reps": args.reps,
                                          "torch": torch.__version__, "rows": rows}, indent=2)
                              + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
