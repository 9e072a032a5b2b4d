"""What a policy search varies: per-layer ratios of a trained network, and extra hyperparameters.

- :class:`Space`: the units of a network a policy gives a ratio to (each prunable weight for
  ``granularity=unstructured``; each channel unit of structured pruning, channels tied by
  residual additions and the like together, for ``granularity=channels``), sampled on a grid of
  ``step`` in ``[0, max_ratio]``; a policy as the profile ``pruner=sensitivity pruner.profile=``
  takes (:meth:`Space.profile`), and the uniform policy of a ratio.
- :func:`parse_params` / :func:`suggest_params`: extra hyperparameters of every trial
  (``params={optimizer.lr: log(1e-4,1e-2), epochs: int(1,3), pruner.norm: choice(1,2)}``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prunelab.errors import ConfigError

#: What a policy gives a ratio to: ``none`` searches only ``params`` (no per-layer policy).
GRANULARITIES = ("unstructured", "channels", "none")
#: The distributions ``params`` values may name.
DISTRIBUTIONS = ("float", "log", "int", "choice")
_PARAM = re.compile(r"^\s*(\w+)\s*\(\s*(.*?)\s*\)\s*$")


@dataclass
class Space:
    """Units (name -> the weights a ratio applies to, and their element count) and the grid."""

    granularity: str
    weights: dict[str, list[str]] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    total: int = 0  # every prunable weight element (the output layer's included)
    max_ratio: float = 0.9
    step: float = 0.05

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def grid(self) -> list[float]:
        n = int(math.floor(self.max_ratio / self.step + 1e-9))
        return [round(i * self.step, 6) for i in range(n + 1)]

    def suggest(self, trial: Any) -> dict[str, float]:
        """One ratio per unit from ``trial`` (Optuna), on the grid."""
        return {n: round(float(trial.suggest_float(f"ratio:{n}", 0.0, self.max_ratio, step=self.step)), 6)
                for n in self.weights}

    @staticmethod
    def ratios_of(params: Mapping[str, Any]) -> dict[str, float]:
        """The ratios among a trial's parameters (``ratio:<unit>``)."""
        return {k.split(":", 1)[1]: float(v) for k, v in params.items() if k.startswith("ratio:")}

    def uniform(self, ratio: float) -> dict[str, float]:
        return {n: float(ratio) for n in self.weights}

    def sparsity(self, ratios: Mapping[str, float]) -> float:
        """The fraction of all prunable weight elements the policy zeroes (channels: the rows
        of the pruned output channels; the inputs they free in the next layer not counted)."""
        zeros = sum(ratios.get(n, 0.0) * self.elements[n] for n in self.weights)
        return zeros / max(self.total, 1)

    def profile(self, ratios: Mapping[str, float]) -> dict[str, Any] | None:
        """The profile of ``pruner=sensitivity`` that applies ``ratios`` (None: prunes nothing)."""
        target = self.sparsity(ratios)
        if target <= 0:
            return None
        layers = {w: float(ratios[n]) for n in self.weights for w in self.weights[n]}
        return {"target_sparsity": round(target, 6),
                "granularity": "structured" if self.granularity == "channels" else "unstructured",
                "layers": layers}


def build_space(net: Any, pruner_cfg: Mapping[str, Any], granularity: str, max_ratio: float,
                step: float) -> Space:
    """The space of ``net`` (its run's ``pruner.include``/``exclude`` decide what is prunable)."""
    from prunelab.pruning import prunable_parameters
    from prunelab.pruning.methods.channels import ChannelLayout

    params = prunable_parameters(net, pruner_cfg.get("include"), pruner_cfg.get("exclude") or ())
    space = Space(granularity, max_ratio=max_ratio, step=step,
                  total=sum(p.numel() for p in params.values()))
    if granularity == "unstructured":
        for n, p in params.items():
            space.weights[n], space.elements[n] = [n], p.numel()
    elif granularity == "channels":
        layout = ChannelLayout.of(net, params)
        for u in layout.units:
            if set(u.rows) <= set(params):
                names = list(u.rows)
                space.weights[names[0]] = names
                space.elements[names[0]] = sum(params[w].numel() for w in names)
    if granularity != "none" and not space.weights:
        raise ConfigError(f"granularity={granularity}: the run's network has nothing to prune "
                          f"that way; allowed: {', '.join(g for g in GRANULARITIES if g != granularity)}")
    return space


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_params(params: Mapping[str, Any] | None) -> dict[str, tuple[str, list[Any]]]:
    """``{key: "log(1e-4,1e-2)"}`` -> ``{key: ("log", [1e-4, 1e-2])}`` (ConfigError naming the
    value and the allowed forms)."""
    out = {}
    for key, spec in (params or {}).items():
        m = _PARAM.match(str(spec))
        allowed = "float(lo,hi), log(lo,hi), int(lo,hi), choice(a,b,...)"
        if not m or m.group(1) not in DISTRIBUTIONS:
            raise ConfigError(f"params.{key}={spec!r}; allowed: {allowed}")
        kind, args = m.group(1), [a.strip() for a in m.group(2).split(",") if a.strip()]
        if kind == "choice":
            if not args:
                raise ConfigError(f"params.{key}={spec!r}: choice needs at least one value")
            import yaml

            out[str(key)] = (kind, [yaml.safe_load(a) for a in args])  # choice(64,128): ints
            continue
        try:
            lo, hi = (_number(a) for a in args)
        except ValueError:
            raise ConfigError(f"params.{key}={spec!r}: needs two numbers; allowed: {allowed}") from None
        if not lo < hi or (kind == "log" and lo <= 0) or (kind == "int" and not (
                isinstance(lo, int) and isinstance(hi, int))):
            raise ConfigError(f"params.{key}={spec!r}: needs lo < hi (log: lo > 0; int: integers)")
        out[str(key)] = (kind, [lo, hi])
    return out


def suggest_params(trial: Any, parsed: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """One value per extra hyperparameter from ``trial``."""
    out = {}
    for key, (kind, args) in parsed.items():
        if kind == "choice":
            out[key] = trial.suggest_categorical(key, args)
        elif kind == "int":
            out[key] = trial.suggest_int(key, args[0], args[1])
        else:
            out[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "log")
    return out
