"""The pruner: which parameters are prunable, how they are scored, and how masks are selected.

One :class:`Pruner` class covers every method: the importance criterion is a registered score
function injected by name (``score``), the selection scope is ``layer`` or ``global``, and the
granularity is ``unstructured`` (elements), ``structured`` (output channels / neurons) or ``nm``
(N kept in every M consecutive inputs). Named presets (``PRUNERS``) are what ``pruner=<name>``
selects; each has a config file.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from prunelab.pruning.granularity import (
    channel_keep,
    channel_scores,
    coupled_parameters,
    expand_channels,
    nm_compatible,
    nm_mask,
    select_channels,
)
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.scores import GRADIENT_SCORES, ScoreContext, get_score
from prunelab.pruning.selection import SCOPES, select_masks

#: Layer types whose ``weight`` is prunable by default.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
GRANULARITIES = ("unstructured", "structured", "nm")
NORMS = (1, 2)

#: Registered pruner presets (config name -> what its config file sets). ``none`` = dense.
PRUNERS: dict[str, dict] = {
    "none": {"score": None},
    "magnitude": {"score": "magnitude", "scope": "layer"},
    "global_magnitude": {"score": "magnitude", "scope": "global"},
    "random": {"score": "random", "scope": "layer"},
    "structured": {"score": "magnitude", "granularity": "structured", "norm": 1},
    "taylor": {"score": "taylor", "scope": "layer"},
    "snip": {"score": "snip", "scope": "global", "at_init": True},
    "nm": {"score": "magnitude", "granularity": "nm", "n": 2, "m": 4},
    "sensitivity": {"score": "magnitude", "scope": "layer", "profile": "<yaml>"},
    "latency_aware": {"score": "magnitude", "granularity": "structured",
                      "latency_budget_ms": "<ms>"},
}


class PruningConfigError(ValueError):
    """A pruning setting that cannot work for this run (one-line message)."""


def check_pruner_name(name: str) -> None:
    if name not in PRUNERS:
        raise PruningConfigError(f"unknown pruner={name!r}; known: {', '.join(sorted(PRUNERS))}")


def default_prunable(model: nn.Module) -> list[str]:
    """Names of the weights of Linear and Conv layers, in module order."""
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, DEFAULT_PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None:
            out.append(f"{mod_name}.weight" if mod_name else "weight")
    return out


def load_profile(path: str | Path) -> dict:
    """A sensitivity profile: ``{"target_sparsity": float, "layers": {name: sparsity}}``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise PruningConfigError(f"pruner.profile={str(path)!r} does not exist; allowed: a YAML "
                                 f"written by python -m prunelab.sensitivity")
    data = yaml.safe_load(p.read_text()) or {}
    layers = data.get("layers")
    target = data.get("target_sparsity")
    if not isinstance(layers, dict) or not layers or not isinstance(target, (int, float)) \
            or not 0 < target < 1:
        raise PruningConfigError(f"pruner.profile={str(path)!r} is not a sensitivity profile "
                                 f"(needs target_sparsity in (0, 1) and a non-empty layers map)")
    for name, s in layers.items():
        if not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise PruningConfigError(f"pruner.profile: layer {name!r} has sparsity {s!r}; allowed: "
                                     f"[0, 1)")
    return {"target_sparsity": float(target), "layers": {k: float(v) for k, v in layers.items()}}


class Pruner:
    """Prunes the parameters selected by ``include``/``exclude`` globs.

    Args:
        name: the preset name (for reports); must be a registered pruner.
        score: registered score name (``magnitude``, ``random``, ``taylor``, ``snip``);
            ``None`` for ``none``.
        scope: ``layer`` (every tensor to the target) or ``global`` (one threshold overall).
        granularity: ``unstructured``, ``structured`` (whole output channels / neurons) or ``nm``.
        norm: structured magnitude ranks channels by the L1 (1) or L2 (2) norm of their weights.
        n, m: N:M sparsity keeps ``n`` of every ``m`` consecutive input weights.
        skip_incompatible: N:M skips (and reports) layers whose input dimension is not a multiple
            of ``m`` instead of failing.
        at_init: prune once, before training, to the final target (SNIP), ignoring the schedule.
        score_batches: batches used for gradient scores when none were gathered during training
            (always the case for ``at_init``).
        profile: a sensitivity profile YAML giving per-layer targets (``pruner=sensitivity``).
        include: glob patterns on parameter names; ``None`` = weights of Linear/Conv layers.
        exclude: glob patterns removed from the included set.
        seed: seeds the generator of stochastic scores (same seed, same masks).
        default_sparsity: the run's ``sparsity`` when the command does not set one.
        latency_budget_ms: ``latency_aware``: the compacted model's latency budget on this
            machine (``sparsity`` is then ignored: the budget decides how much goes).
        latency_batch_size, latency_threads: where that latency is measured.
    """

    def __init__(self, name: str = "magnitude", score: str | None = "magnitude",
                 scope: str = "layer", granularity: str = "unstructured", norm: int = 1,
                 n: int = 2, m: int = 4, skip_incompatible: bool = False, at_init: bool = False,
                 score_batches: int = 10, profile: str | None = None,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                 seed: int = 0, default_sparsity: float = 0.5,
                 latency_budget_ms: float | None = None, latency_batch_size: int = 1,
                 latency_threads: int | None = None):
        check_pruner_name(name)
        scope = getattr(scope, "value", scope)
        granularity = getattr(granularity, "value", granularity)
        if scope not in SCOPES:
            raise PruningConfigError(f"pruner.scope={scope!r} is not one of {', '.join(SCOPES)}")
        if granularity not in GRANULARITIES:
            raise PruningConfigError(f"pruner.granularity={granularity!r} is not one of "
                                     f"{', '.join(GRANULARITIES)}")
        if norm not in NORMS:
            raise PruningConfigError(f"pruner.norm={norm!r} is not one of 1, 2")
        if granularity == "nm":
            if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
                raise PruningConfigError(f"pruner.n={n!r} and pruner.m={m!r}: need integers "
                                         f"with 1 <= n < m")
        if not isinstance(score_batches, int) or score_batches < 1:
            raise PruningConfigError(f"pruner.score_batches={score_batches!r} must be an integer >= 1")
        if score is not None:
            try:
                get_score(score)
            except KeyError as exc:
                raise PruningConfigError(str(exc.args[0])) from None
        self.name = name
        self.score = score
        self.scope = scope
        self.granularity = granularity
        self.norm = int(norm)
        self.n, self.m = int(n), int(m)
        self.skip_incompatible = bool(skip_incompatible)
        self.at_init = bool(at_init)
        self.score_batches = int(score_batches)
        self.profile = load_profile(profile) if profile else None
        if name == "sensitivity" and self.profile is None:
            raise PruningConfigError("pruner=sensitivity needs pruner.profile=<yaml> (written by "
                                     "python -m prunelab.sensitivity)")
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else []
        self.seed = int(seed)
        self.default_sparsity = float(default_sparsity)
        self.skipped: list[str] = []
        self._protected: frozenset[str] = frozenset()
        if name == "latency_aware":
            if granularity != "structured":
                raise PruningConfigError("pruner=latency_aware removes whole channels: "
                                         "pruner.granularity must be structured")
            if not isinstance(latency_budget_ms, (int, float)) or isinstance(latency_budget_ms, bool) \
                    or latency_budget_ms <= 0:
                raise PruningConfigError(f"pruner=latency_aware needs hardware.latency_budget_ms="
                                         f"<milliseconds > 0>, got {latency_budget_ms!r}")
        self.latency_budget_ms = latency_budget_ms
        self.latency_batch_size = int(latency_batch_size)
        self.latency_threads = latency_threads
        self.latency_report: dict | None = None
        self._model: nn.Module | None = None
        self._tied: dict[str, list[str]] = {}
        self._tied_key: tuple | None = None

    # -- properties -------------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        return self.score is None

    @property
    def needs_gradients(self) -> bool:
        return self.score in GRADIENT_SCORES

    @property
    def nm_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check_sparsity(self, sparsity: float) -> None:
        """Method-specific constraints on the final target."""
        if self.granularity == "nm" and not math.isclose(sparsity, self.nm_sparsity, abs_tol=1e-9):
            raise PruningConfigError(
                f"pruner=nm keeps n={self.n} of every m={self.m}: sparsity must be "
                f"{self.nm_sparsity:g} (1 - n/m), got sparsity={sparsity}")
        if self.profile is not None:
            self.layer_targets(sparsity)  # every layer's scaled target must stay below 1

    # -- parameters -------------------------------------------------------------------------------
    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable parameters of ``model`` by name, in registration order."""
        named = dict(model.named_parameters())
        if self.include is None:
            names = default_prunable(model)
        else:
            names = [n for n in named if any(fnmatch.fnmatchcase(n, p) for p in self.include)]
            if not names:
                raise PruningConfigError(
                    f"pruner.include={self.include} matches no parameter; parameter names look like: "
                    f"{', '.join(list(named)[:6])}"
                )
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)]
        if self.granularity == "nm":
            bad = [n for n in names if not nm_compatible(named[n].shape, self.m)]
            if bad and not self.skip_incompatible:
                shape = tuple(named[bad[0]].shape)
                raise PruningConfigError(
                    f"pruner=nm: {bad[0]} has input dimension {shape[1] if len(shape) > 1 else 1}, "
                    f"not a multiple of m={self.m} (also: {', '.join(bad[1:]) or 'none'}); set "
                    f"pruner.skip_incompatible=true to skip such layers")
            self.skipped = bad
            names = [n for n in names if n not in bad]
        if not names:
            raise PruningConfigError(f"pruner.exclude={self.exclude} leaves no prunable parameter")
        if self.profile is not None:
            unknown = sorted(set(self.profile["layers"]) - set(names))
            if unknown:
                raise PruningConfigError(
                    f"pruner.profile names layers the model does not prune: {', '.join(unknown)}; "
                    f"prunable: {', '.join(names)}")
        return {n: named[n] for n in names}

    def bindings(self, model: nn.Module) -> tuple[dict[str, nn.Parameter], dict | None]:
        """The prunable parameters of ``model`` and, for structured pruning, the bias / BatchNorm
        parameters coupled to each one's output channels (``MaskSet``'s two arguments)."""
        params = self.resolve(model)
        if self.granularity != "structured":
            return params, None
        named = dict(model.named_parameters())
        coupled = {w: {c: named[c] for c in cs}
                   for w, cs in coupled_parameters(model, list(params)).items()}
        self._protected = frozenset(self._output_weights(model, params))
        self._model = model
        self._tied = self._tied_channels(model, list(params))
        return params, coupled

    def _tied_channels(self, model: nn.Module, names: list[str]) -> dict[str, list[str]]:
        """Prunable weights whose output channels a residual addition ties together (found by
        tracing the model; ``{first weight: [weights]}``). Empty when the model has no
        ``input_shape`` or cannot be traced."""
        key = (id(model), tuple(names))
        if self._tied_key == key:
            return self._tied
        self._tied_key = key
        shape = getattr(model, "input_shape", None)
        if shape is None:
            return {}
        from prunelab.compress.compact import CompactionError, channel_groups

        try:
            groups = channel_groups(model, tuple(shape))
        except CompactionError:
            return {}
        known = set(names)
        out = {}
        for g in groups:
            weights = [f"{p}.weight" for p in g.producers]
            if len(weights) > 1 and not g.fixed and set(weights) <= known:
                out[weights[0]] = weights
        return out

    def prepare(self, model: nn.Module) -> MaskSet:
        """A fresh :class:`MaskSet` over ``model``'s prunable (and coupled) parameters."""
        return MaskSet(*self.bindings(model))

    def max_sparsity(self, params: Mapping[str, torch.Tensor]) -> float:
        """The highest sparsity this pruner can reach on ``params`` (structured: all but one
        channel of every unprotected layer; otherwise just below 1)."""
        if self.granularity != "structured":
            return 1.0
        total = sum(p.numel() for p in params.values())
        removable = sum(p.numel() - p[0].numel() for n, p in params.items()
                        if n not in self._protected)
        return removable / total

    @staticmethod
    def _output_weights(model: nn.Module, params: Mapping[str, nn.Parameter]) -> list[str]:
        from prunelab.models import output_layer_name

        try:
            out = output_layer_name(model)
        except (AttributeError, ValueError):
            return []
        return [n for n in params if n.rsplit(".", 1)[0] == out]

    def generator(self, event: int) -> torch.Generator:
        """A CPU generator seeded from the pruner seed and the pruning event index."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + event)

    # -- masks ------------------------------------------------------------------------------------
    def layer_targets(self, target: float) -> dict[str, float] | float:
        """Per-layer targets from a profile, scaled by ``target / profile target`` (so a schedule
        reaches the profile exactly when ``target`` equals the profile's target sparsity)."""
        if self.profile is None:
            return target
        scale = target / self.profile["target_sparsity"]
        out = {}
        for name, s in self.profile["layers"].items():
            t = s * scale
            if t >= 1.0:
                raise PruningConfigError(f"pruner.profile: layer {name} would reach sparsity {t:.3f} "
                                         f">= 1 at target {target}")
            out[name] = t
        return out

    @torch.no_grad()
    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """New keep-masks at the cumulative ``target`` sparsity."""
        if self.is_dense:
            raise PruningConfigError("pruner=none does not prune; use sparsity=0")
        if self.name == "latency_aware":
            return self._latency_masks(params, old_masks)
        if self.granularity == "structured" and self.score == "magnitude":
            scores = None  # channels are ranked by the norm of their weights directly
        else:
            fn = get_score(self.score)
            gen = self.generator(event)
            scores = {
                n: fn(p, ScoreContext(name=n, generator=gen, stats=(stats or {}).get(n, {})))
                for n, p in params.items()
            }
        if self.granularity == "structured":
            sizes = {n: params[n][0].numel() for n in params}
            if scores is None:
                ch = {n: channel_scores(params[n], "norm", self.norm) for n in params}
            else:
                ch = {n: channel_scores(scores[n], "sum") for n in params}
            total = sum(p.numel() for p in params.values())
            units = {u: names for u, names in self._tied.items() if set(names) <= set(params)}
            tied = {n for names in units.values() for n in names}
            units.update({n: [n] for n in params if n not in tied})
            # channels tied by a residual addition are scored and kept together: the unit's
            # score is the norm (or sum) over all of its layers' weights of that channel
            pw = float(self.norm)
            u_ch, u_sizes, u_norm, u_old = {}, {}, {}, {}
            for u, names in units.items():
                u_ch[u] = (sum(ch[n] ** pw for n in names) ** (1.0 / pw) if scores is None
                           else sum(ch[n] for n in names))
                u_sizes[u] = sum(sizes[n] for n in names)
                # global scope compares a per-weight value: the norm / size^(1/p), or the sum / size
                u_norm[u] = (u_sizes[u] ** (1.0 / pw) if scores is None else float(u_sizes[u]))
                k = channel_keep(old_masks[names[0]])
                for n in names[1:]:
                    k = k & channel_keep(old_masks[n])
                u_old[u] = k
            protected = frozenset(u for u, names in units.items() if set(names) & self._protected)
            keep = select_channels(u_ch, u_old, target, self.scope, u_sizes, total, protected,
                                   u_norm)
            return {n: expand_channels(keep[u], params[n].shape)
                    for u, names in units.items() for n in names}
        if self.granularity == "nm":
            per_group = min(self.m - self.n, int(math.floor(target * self.m + 1e-9)))
            return {n: nm_mask(scores[n], old_masks[n], self.n, self.m, per_group) for n in params}
        if self.profile is not None:
            targets = self.layer_targets(target)
            full = {n: targets.get(n, 0.0) for n in params}
            return select_masks(scores, old_masks, full, "layer")
        return select_masks(scores, old_masks, target, self.scope)

    def latency_range(self) -> tuple[float, float]:
        """(smallest reachable, current) latency in ms of the bound model (latency_aware)."""
        from prunelab.pruning.latency import latency_floor

        return latency_floor(self._model, self._model.input_shape, list(self.resolve(self._model)),
                             sorted(self._protected), self.latency_batch_size,
                             self.latency_threads)

    def _latency_masks(self, params: Mapping[str, torch.Tensor],
                       old_masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from prunelab.pruning.latency import latency_aware_keeps

        if self._model is None:
            raise PruningConfigError("pruner=latency_aware must be bound to a model first")
        keeps, self.latency_report = latency_aware_keeps(
            self._model, self._model.input_shape, list(params), sorted(self._protected),
            {n: channel_keep(old_masks[n]) for n in params}, float(self.latency_budget_ms),
            self.latency_batch_size, self.latency_threads)
        return {n: (expand_channels(keeps[n], params[n].shape) if n in keeps else old_masks[n])
                for n in params}

    def __repr__(self) -> str:
        return (f"Pruner(name={self.name!r}, score={self.score!r}, scope={self.scope!r}, "
                f"granularity={self.granularity!r}, include={self.include}, exclude={self.exclude})")
