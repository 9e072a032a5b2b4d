"""The interface every pruning method implements, and the score-then-select base.

A method is one class with its own constructor arguments (its config schema), a registry/config
``name`` and declarations the callback and the run assembly read instead of names:

- ``needs``: what the method needs besides the weights: ``gradients`` (|w * dL/dw| gathered
  during the training epoch before each pruning event), ``calibration`` (a pass over training
  batches outside training, e.g. at initialization), ``latency`` (a latency table measured on
  this machine), ``profile`` (a sensitivity profile file), ``network`` (scores computed from
  the network as a function, :meth:`PruningMethod.network_scores`: GraSP's Hessian-gradient
  product, SynFlow's data-free synaptic flow), ``pretrained`` (trained weights to start from:
  ``init_from`` or a library model's ``model.weights``; movement pruning).
- ``may_regrow``: whether its masks may gain kept elements; otherwise the callback refuses a
  mask that revives a pruned weight.
- ``dynamic``: masks move during training at constant sparsity: the callback calls
  ``update(params, masks, step, total)`` after every optimizer step ``due(step, total)`` says
  (:mod:`prunelab.pruning.methods.dynamic`).
- ``is_dense`` (prunes nothing), ``at_init`` (prunes once, before training, to the final target),
  ``granularity`` and ``scope`` (what results.json reports).

A method is built from its config by :func:`build_method` (``pruner._target_`` names the class).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunelab.errors import UserError
from prunelab.pruning.distribution import DISTRIBUTIONS, layer_sparsities
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.methods.channels import ChannelLayout, select_structured
from prunelab.pruning.params import PruningConfigError, prunable_parameters
from prunelab.pruning.scores import ScoreContext, ScoreFn, get_score
from prunelab.pruning.selection import SCOPES, select_masks
from prunelab.seeds import event_seed

#: What a method may declare in ``needs``.
NEEDS = frozenset({"gradients", "calibration", "latency", "profile", "network", "pretrained"})
#: Config keys that belong to the run, not to the method: dropped before the class is built.
RUN_KEYS = ("default_sparsity",)


def mask_generator(seed: int, event: int) -> torch.Generator:
    """The CPU generator of stochastic scores at pruning ``event`` (0, 1, ...), or at lottery
    level ``event``: seeded ``seed * 1_000_003 + event``, the formula every published random mask
    was drawn with (kept so that the same seed gives the same masks)."""
    return torch.Generator().manual_seed(event_seed(seed, event))


@dataclass
class NetworkContext:
    """What :meth:`PruningMethod.network_scores` may use: the network (scores must leave its
    weights and buffers as they were), its prunable parameters and current masks, training
    batches on the network's device (``batches()`` makes the loader only when called: a data-free
    method never touches the data), the task loss of a batch, and the input shape."""

    net: nn.Module
    params: Mapping[str, nn.Parameter]
    masks: Mapping[str, torch.Tensor]
    batches: Callable[[], Iterator[Any]]
    loss: Callable[[Any], torch.Tensor]
    input_shape: tuple[int, ...] | None = None
    #: the cumulative sparsity this event prunes to (SynFlow's rounds rise towards it)
    target: float | None = None


@contextmanager
def kept_state(net: nn.Module) -> Iterator[None]:
    """The network's buffers (BatchNorm statistics) and train/eval mode as they were after the
    block: scoring passes over data leave no trace in the network."""
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    modes = {m: m.training for m in net.modules()}  # each module's own (a frozen BatchNorm)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in net.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])
        for m, training in modes.items():
            m.training = training


def _value(x: Any) -> Any:
    """An enum member from a structured config as its plain value."""
    return getattr(x, "value", x)


class PruningMethod:
    """Base class of every pruning method.

    Args:
        include: glob patterns on parameter names; ``None`` = weights of Linear/Conv layers.
        exclude: glob patterns removed from the included set.
    """

    name: ClassVar[str] = "method"
    needs: ClassVar[frozenset[str]] = frozenset()
    may_regrow: ClassVar[bool] = False
    is_dense: ClassVar[bool] = False
    at_init: ClassVar[bool] = False
    dynamic: ClassVar[bool] = False
    #: ``gradients``: accumulated over the epoch before each event (``epoch``) or over every
    #: step from the start of training (``run``), each step adding :meth:`step_statistic`
    accumulate: ClassVar[str] = "epoch"
    granularity: str = "unstructured"
    scope: str = "layer"
    #: batches of a calibration pass (methods that need gradients, when none were gathered)
    score_batches: int = 10

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise TypeError(f"{cls.__name__}.needs has {sorted(unknown)}; allowed: "
                            f"{', '.join(sorted(NEEDS))}")

    def __init__(self, include: Sequence[str] | None = None, exclude: Sequence[str] = ()):
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else []
        self.skipped: list[str] = []

    @property
    def needs_gradients(self) -> bool:
        """Whether pruning events need accumulated |w * dL/dw| (``stats["wg"]``)."""
        return bool(self.needs & {"gradients", "calibration"})

    # -- parameters -------------------------------------------------------------------------------
    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters this method prunes, by name, in registration order."""
        return prunable_parameters(model, self.include, self.exclude)

    def bindings(self, model: nn.Module) -> tuple[dict[str, nn.Parameter], dict | None]:
        """``MaskSet``'s two arguments: the prunable parameters and, for methods that remove
        whole channels, the parameters coupled to each one's output channels."""
        return self.resolve(model), None

    def prepare(self, model: nn.Module) -> MaskSet:
        """A fresh :class:`MaskSet` over ``model``'s prunable (and coupled) parameters."""
        return MaskSet(*self.bindings(model))

    def max_sparsity(self, params: Mapping[str, torch.Tensor]) -> float:
        """The highest sparsity this method can reach on ``params``."""
        return 1.0

    # -- checks -----------------------------------------------------------------------------------
    def check_sparsity(self, sparsity: float) -> None:
        """Method-specific constraints on the final target (raises PruningConfigError)."""

    def check_run(self, model: nn.Module, schedule: Any, sparsity: float) -> None:
        """Method-specific checks before anything is trained (raises a UserError)."""

    # -- masks ------------------------------------------------------------------------------------
    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """New keep-masks at the cumulative ``target`` sparsity (``event``: the pruning event's
        index; ``stats``: per parameter, what the callback gathered, e.g. ``{"wg": tensor}``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement compute_masks")

    @staticmethod
    def step_statistic(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """What one optimizer step adds to a ``gradients`` method's statistic: |w * dL/dw|."""
        return (weight * grad).abs()

    def network_scores(self, ctx: NetworkContext) -> dict[str, torch.Tensor]:
        """Methods that need ``network``: every parameter's element scores (larger = keep)
        before a pruning event, from the network itself. The callback sums them across DDP
        ranks and hands them to :meth:`compute_masks` as ``stats[name]["score"]``."""
        raise NotImplementedError(f"{type(self).__name__} needs 'network' but does not "
                                  f"implement network_scores")

    # -- state across a resume (in the callback's checkpoint) --------------------------------------
    def state_dict(self) -> dict:
        """What the method counts during a run (a dynamic method's updates), for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""

    # -- results ----------------------------------------------------------------------------------
    def report(self) -> dict | None:
        """The method's own result for results.json (None when it has none)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What results.json says about the method; ``method_report`` is :meth:`report`."""
        return {"pruner": self.name, "scope": self.scope, "granularity": self.granularity,
                "skipped_layers": list(self.skipped), "method_report": self.report()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, scope={self.scope!r}, "
                f"granularity={self.granularity!r}, include={self.include}, "
                f"exclude={self.exclude})")


class ScoreThenSelect(PruningMethod):
    """A score per element, then a selection: the lowest scores go (per tensor or globally,
    elements or whole output channels). A subclass sets ``name`` and ``score`` (a registered
    score name or a callable ``(param, ScoreContext) -> Tensor``, larger = keep) and, if its score
    needs gradients, ``needs``. That, and a YAML file in ``conf/pruner``, is a new method.

    Args:
        scope: ``layer`` (every tensor to the target) or ``global`` (one threshold overall).
        granularity: ``unstructured`` (elements) or ``structured`` (whole output channels /
            neurons; the channel's bias and following BatchNorm are masked with it, the output
            layer and the last channel of a layer are never pruned).
        include, exclude: which parameters (see :class:`PruningMethod`).
        seed: seeds the generator handed to stochastic scores (same seed, same masks).
        distribution: ``None`` (the scope decides), or ``uniform`` / ``erk``: each tensor's
            sparsity from the global target (:mod:`prunelab.pruning.distribution`;
            unstructured only). The scope reported is then the distribution's name.
    """

    score: ClassVar[str | ScoreFn] = "magnitude"
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "structured")
    #: structured: a channel's score is the L``channel_norm`` norm of its element scores, or
    #: their sum when ``None``
    channel_norm: int | None = None

    def __init__(self, scope: str = "layer", granularity: str = "unstructured",
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0, distribution: str | None = None):
        super().__init__(include, exclude)
        scope, granularity = _value(scope), _value(granularity)
        distribution = _value(distribution)
        if scope not in SCOPES:
            raise PruningConfigError(f"pruner.scope={scope!r} is not one of {', '.join(SCOPES)}")
        if granularity not in self.granularities:
            raise PruningConfigError(f"pruner.granularity={granularity!r} is not one of "
                                     f"{', '.join(self.granularities)}")
        if distribution is not None and distribution not in DISTRIBUTIONS:
            raise PruningConfigError(f"pruner.distribution={distribution!r} is not one of "
                                     f"{', '.join(DISTRIBUTIONS)}, null")
        if distribution is not None and granularity != "unstructured":
            raise PruningConfigError(
                f"pruner.distribution={distribution} sets each weight tensor's sparsity, which "
                f"needs pruner.granularity=unstructured (this is {granularity}); allowed with "
                f"{granularity}: pruner.distribution=null")
        self.scope = scope if distribution is None else distribution
        self.distribution = distribution
        self.granularity = granularity
        self.seed = int(seed)
        self.score_fn: ScoreFn = self._score_function()
        self._layout: ChannelLayout | None = None
        self._layout_key: tuple | None = None

    def _score_function(self) -> ScoreFn:
        score = type(self).score  # a plain function as class attribute stays unbound
        if not isinstance(score, str):
            return score
        try:
            return get_score(score)
        except KeyError as exc:
            raise PruningConfigError(str(exc.args[0])) from None

    # -- structured bookkeeping -------------------------------------------------------------------
    def bindings(self, model: nn.Module) -> tuple[dict[str, nn.Parameter], dict | None]:
        params = self.resolve(model)
        if self.granularity != "structured":
            return params, None
        key = (id(model), tuple(params))
        reuse = self._layout.groups if self._layout is not None and self._layout_key == key else None
        self._layout = ChannelLayout.of(model, params, reuse)
        self._layout_key = key
        return params, self._layout.coupled

    @property
    def _protected(self) -> frozenset[str]:
        return self._layout.protected if self._layout is not None else frozenset()

    def max_sparsity(self, params: Mapping[str, torch.Tensor]) -> float:
        if self.granularity != "structured":
            return 1.0
        return (self._layout or ChannelLayout.per_weight(params)).reach(params)

    # -- masks ------------------------------------------------------------------------------------
    def scores(self, params: Mapping[str, torch.Tensor], event: int = 0,
               stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """Every parameter's element scores at pruning ``event``."""
        gen = mask_generator(self.seed, event)
        return {n: self.score_fn(p, ScoreContext(name=n, generator=gen,
                                                 stats=(stats or {}).get(n, {})))
                for n, p in params.items()}

    def select(self, params: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
               old_masks: Mapping[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
        """Masks from scores at the cumulative ``target``; old zeros stay zero."""
        if self.granularity == "structured":
            layout = self._layout or ChannelLayout.per_weight(params)
            return select_structured(params, scores, old_masks, target, self.scope, layout,
                                     self.channel_norm)
        if self.distribution is not None:  # each tensor to its share of the global budget
            shapes = {n: tuple(p.shape) for n, p in params.items()}
            return select_masks(scores, old_masks,
                                layer_sparsities(shapes, target, self.distribution), "layer")
        return select_masks(scores, old_masks, target, self.scope)

    @torch.no_grad()
    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        return self.select(params, self.scores(params, event, stats), old_masks, target)


def build_method(node: Any, **overrides: Any) -> PruningMethod:
    """The method a ``pruner`` config node describes (``_target_``: its class), without the keys
    that belong to the run (``default_sparsity``: the run's ``sparsity`` default reads it).

    A constructor's error reaches the caller as itself (a one-line ``UserError``), not wrapped in
    Hydra's ``InstantiationException``; a class that cannot be imported or does not take the
    node's keys is a one-line PruningConfigError."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    for key in RUN_KEYS:
        cfg.pop(key, None)
    cfg.update(overrides)
    target = cfg.get("_target_")
    try:
        method = instantiate(cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if cause is not None and not isinstance(cause, (ImportError, TypeError)):
            raise cause  # a bug in the method: its traceback is kept
        # not importable, or keys its constructor does not take: a config mistake
        raise PruningConfigError(f"pruner._target_={target!r} could not be built: "
                                 f"{' '.join(str(cause or exc).split())}") from exc
    if not isinstance(method, PruningMethod):
        raise PruningConfigError(f"pruner._target_={target!r} is not a pruning method; allowed: "
                                 f"a subclass of prunelab.pruning.methods.PruningMethod")
    return method


__all__ = ["NEEDS", "RUN_KEYS", "NetworkContext", "PruningMethod", "ScoreThenSelect",
           "build_method", "kept_state", "mask_generator"]
