"""Post-training int8 quantization of a (pruned) model, and a sparse int8 file format.

- Networks with only Linear layers: dynamic quantization (int8 weights, activations quantized on
  the fly), ``torch.ao.quantization.quantize_dynamic``.
- Networks with convolutions: static quantization in FX graph mode (``prepare_fx``, calibration
  on real batches, ``convert_fx``) with the x86 backend's config: int8 weights per output channel.

Both quantize weights *symmetrically* (zero point 0), so a pruned weight, exactly 0.0, becomes
exactly int8 0: :func:`int8_weights` returns the integer weights to count them.
:func:`save_int8_sparse` stores the int8 weights as a bitmask of the non-zeros plus the non-zero
int8 values (with their scales), which is what makes a pruned int8 model small on disk.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import UserError
from prunelab.files import save_torch_atomic
from prunelab.losses import classification_loss


class QuantizationError(UserError):
    """A quantization setting that cannot work (one-line message)."""


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())


def quantize_int8(model: nn.Module, input_shape: Sequence[int],
                  calibration: Iterable[torch.Tensor] | None = None,
                  mode: str = "auto") -> tuple[nn.Module, str]:
    """An int8 copy of ``model`` (eval mode, CPU) and the mode used (``dynamic`` or ``static``).

    ``mode="auto"``: static when the model has convolutions (``calibration`` batches are then
    required), dynamic otherwise."""
    from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if mode not in ("auto", "dynamic", "static"):
        raise QuantizationError(f"quantize mode={mode!r}; allowed: auto, dynamic, static")
    net = copy.deepcopy(model).float().cpu().eval()
    if mode == "auto":
        mode = "static" if has_conv(net) else "dynamic"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        if mode == "dynamic":
            return quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8), mode
        if calibration is None:
            raise QuantizationError("static quantization needs calibration batches")
        example = (torch.zeros(1, *input_shape),)
        prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), example)
        seen = 0
        with torch.inference_mode():
            for x in calibration:
                prepared(x.float().cpu())
                seen += 1
        if seen == 0:
            raise QuantizationError("static quantization needs at least one calibration batch")
        return convert_fx(prepared), mode


def int8_weights(qmodel: nn.Module) -> dict[str, dict[str, Any]]:
    """The integer weights of every quantized layer: ``{name: {"int8", "scale", "zero_point",
    "axis"}}`` (scale and zero point per tensor or per output channel)."""
    out = {}
    for name, m in qmodel.named_modules():
        w = getattr(m, "weight", None)
        if not callable(w):  # float layers hold a Parameter; quantized ones a method
            continue
        try:
            q = w()
        except Exception:  # noqa: BLE001 - not a quantized layer
            continue
        if not isinstance(q, torch.Tensor) or not q.is_quantized:
            continue
        if q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale = q.q_per_channel_scales().float()
            zp = q.q_per_channel_zero_points()
            axis = int(q.q_per_channel_axis())
        else:
            scale = torch.tensor([q.q_scale()], dtype=torch.float32)
            zp = torch.tensor([q.q_zero_point()])
            axis = None
        bias = m.bias() if callable(getattr(m, "bias", None)) else getattr(m, "bias", None)
        out[name] = {"int8": q.int_repr(), "scale": scale, "zero_point": zp, "axis": axis,
                     "bias": None if bias is None else bias.detach().float()}
    return out


def count_int8_zeros(qmodel: nn.Module) -> dict[str, Any]:
    """Zeros in the int8 weights (global and per layer)."""
    per_layer, zeros, total = {}, 0, 0
    for name, w in int8_weights(qmodel).items():
        z = int((w["int8"] == 0).sum())
        per_layer[name] = z / w["int8"].numel()
        zeros += z
        total += w["int8"].numel()
    return {"zeros": zeros, "total": total, "global": zeros / total if total else 0.0,
            "per_layer": per_layer}


def encode_int8_sparse(qmodel: nn.Module) -> dict[str, Any]:
    """``{name: {"shape", "bitmask" (packed bits of the non-zeros), "values" (int8 non-zeros),
    "scale", "zero_point", "axis", "bias"}}`` for every quantized layer."""
    import numpy as np

    out = {}
    for name, w in int8_weights(qmodel).items():
        q = w["int8"]
        nz = (q != 0).flatten()
        out[name] = {
            "shape": list(q.shape),
            "bitmask": torch.from_numpy(np.packbits(nz.numpy())),
            "values": q.flatten()[nz].clone(),
            "scale": w["scale"], "zero_point": w["zero_point"].to(torch.int16), "axis": w["axis"],
            "bias": w["bias"],
        }
    return out


def decode_int8_sparse(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The dense int8 weight tensors of an :func:`encode_int8_sparse` payload."""
    import numpy as np

    out = {}
    for name, e in payload.items():
        numel = int(np.prod(e["shape"]))
        nz = torch.from_numpy(np.unpackbits(e["bitmask"].numpy())[:numel].astype(bool))
        dense = torch.zeros(numel, dtype=torch.int8)
        dense[nz] = e["values"]
        out[name] = dense.reshape(e["shape"])
    return out


def save_int8_sparse(qmodel: nn.Module, path: str | Path) -> int:
    """Write the sparse int8 encoding; returns the file size in bytes."""
    path = Path(path)
    save_torch_atomic(encode_int8_sparse(qmodel), path)
    return path.stat().st_size


def qat_int8(model: nn.Module, input_shape: Sequence[int], train_batches: Iterable,
             epochs: int = 1, lr: float = 1e-4, calibration: Iterable[torch.Tensor] | None = None
             ) -> nn.Module:
    """Quantization-aware fine-tuning, then int8: fake-quantized training (FX graph mode, the
    x86 QAT config) of a copy of ``model`` for ``epochs`` passes over ``train_batches`` with Adam
    at ``lr``; the pruned weights (exactly 0.0) are multiplied back to zero after every step, so
    the int8 model keeps every pruned weight at int8 0."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    if not isinstance(epochs, int) or epochs < 1:
        raise QuantizationError(f"qat_epochs={epochs!r} must be an integer >= 1")
    net = copy.deepcopy(model).float().cpu().train()
    zero = {n: (p.detach() == 0) for n, p in net.named_parameters() if p.dim() > 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(net, get_default_qat_qconfig_mapping("x86"),
                                  (torch.zeros(1, *input_shape),))
        params = dict(prepared.named_parameters())
        masked = [(params[n], ~z) for n, z in zero.items() if n in params]
        opt = torch.optim.Adam(prepared.parameters(), lr=lr)
        batches = list(train_batches)
        for _ in range(epochs):
            for x, y in batches:
                opt.zero_grad()
                loss = classification_loss(prepared(x.float().cpu()), y.cpu())
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, keep in masked:
                        p.mul_(keep)
        prepared.eval()
        return convert_fx(prepared)
