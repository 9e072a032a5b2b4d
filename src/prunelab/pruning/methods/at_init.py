"""Pruning at initialization from the network itself: GraSP and SynFlow (SNIP: ``gradient.py``).

Both declare ``needs = {"network"}``: before the one pruning event (``at_init``) the callback
calls :meth:`network_scores`, restores the network's buffers and train/eval mode, sums the scores
across DDP ranks and hands them to :meth:`ScoreThenSelect.compute_masks` as
``stats[name]["score"]``; the shared selection then removes the lowest scores (larger = keep),
globally by default. Neither changes the network's weights.

- :class:`GraSP` (Wang, Zhang, Grosse 2020, "Picking Winning Tickets Before Training by
  Preserving Gradient Flow"): keep-score ``theta * H g`` (the reference removes the largest
  ``-theta * H g``), from ``score_batches`` training batches at temperature ``T``.
- :class:`SynFlow` (Tanaka, Kunin, Yamins, Ganguli 2020, "Pruning neural networks without any
  data by iteratively conserving synaptic flow"): data-free, ``|theta * dR/dtheta|`` with
  ``R = sum(f_|theta|(1))``, iterated over ``rounds`` rounds of exponentially rising sparsity.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.losses import classification_loss
from prunelab.pruning.methods.base import NetworkContext, ScoreThenSelect, kept_state
from prunelab.pruning.methods.gradient import score_batches_setting
from prunelab.pruning.params import PruningConfigError, default_prunable
from prunelab.pruning.scores import ScoreContext


def network_score(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """The score a ``network`` method computed for this parameter (``ctx.stats["score"]``,
    handed over by the PruningCallback from :meth:`PruningMethod.network_scores`)."""
    score = ctx.stats.get("score")
    if score is None:
        raise RuntimeError(f"no network score for {ctx.name!r} (is the PruningCallback driving "
                           f"this pruner? it calls network_scores before the pruning event)")
    return score


# -- GraSP ----------------------------------------------------------------------------------------

def grasp_scores(net: nn.Module, params: Mapping[str, torch.Tensor], batches: Sequence[Any],
                 temperature: float) -> dict[str, torch.Tensor]:
    """``theta * H g`` per element of ``params`` (larger = keep), as the reference computes it:

    (a) ``g`` = the gradient of the cross-entropy of ``net(x) / temperature`` w.r.t. the weights,
    summed over ``batches`` (no graph kept); (b) for the same batches, the gradient again with its
    graph, ``z = sum_i (g_i * grad_i).sum()`` and ``H g = dz/dtheta`` (summed over the batches).

    The sign: removing weight ``i`` (``delta = -theta_i``) changes the gradient flow ``g^T g``
    by ``2 S_i`` to first order, with the paper's score ``S = -theta * H g``. The reference
    removes the weights with the *largest* ``S`` (their removal reduces the flow least, or raises
    it) and keeps those whose removal would reduce it most. The selection here removes the
    *lowest* scores, so the keep-score is ``-S = theta * H g``. The weights' ``.grad`` is not
    touched (``torch.autograd.grad``).
    """
    names = list(params)
    weights = [params[n] for n in names]

    def grads(batch: Any, create_graph: bool) -> tuple[torch.Tensor | None, ...]:
        x, y = batch[0], batch[1]
        loss = classification_loss(net(x) / temperature, y)
        return torch.autograd.grad(loss, weights, create_graph=create_graph, allow_unused=True)

    g = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        for acc, d in zip(g, grads(batch, create_graph=False)):
            if d is not None:
                acc.add_(d.detach())
    hg = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        first = grads(batch, create_graph=True)
        terms = [(gi * d).sum() for gi, d in zip(g, first) if d is not None]
        if not terms:
            continue
        z = torch.stack(terms).sum()
        if not z.requires_grad:  # no gradient depends on a weight: H g = 0
            continue
        for acc, h in zip(hg, torch.autograd.grad(z, weights, allow_unused=True)):
            if h is not None:
                acc.add_(h.detach())
    return {n: (w.detach() * h).float() for n, w, h in zip(names, weights, hg)}


class NetworkScored(ScoreThenSelect):
    """What GraSP and SynFlow share: scores from :meth:`network_scores` before one pruning event
    at initialization, unstructured."""

    score = network_score
    needs = frozenset({"network"})
    at_init = True
    granularities = ("unstructured",)


class GraSP(NetworkScored):
    """GraSP (Wang, Zhang & Grosse 2020): keep the weights whose removal would reduce the
    gradient flow most, keep-score ``theta * H g`` (:func:`grasp_scores`: the reference prunes the
    largest ``-theta * H g``), at initialization, once, to the final target; the schedule is not
    used. The loss is the cross-entropy of the logits divided by ``temperature`` (the reference's
    T = 200, which keeps the softmax from saturating) on ``score_batches`` training batches, the
    network in train mode (as SNIP; its BatchNorm statistics are restored afterwards). Under DDP
    each rank's product uses its own batches' ``g``; the callback sums the ranks' scores.

    The reference also re-initializes Linear layers (Xavier) before scoring and draws a
    class-balanced batch; neither is done here (the network is scored as it was built, on the
    training loader's batches).

    Args:
        score_batches: training batches of both passes (the same batches; default 1).
        temperature: the logits are divided by it before the loss (> 0; default 200).
        scope, include, exclude, seed, distribution: see :class:`ScoreThenSelect`;
            granularity: unstructured only.
    """

    name = "grasp"

    def __init__(self, scope: str = "global", granularity: str = "unstructured",
                 score_batches: int = 1, temperature: float = 200.0,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, include, exclude, seed, distribution=distribution)
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not math.isfinite(temperature) or temperature <= 0):
            raise PruningConfigError(f"pruner.temperature={temperature!r} must be a number > 0 "
                                     f"(the logits are divided by it; the paper's is 200)")
        self.score_batches = score_batches_setting(score_batches)
        self.temperature = float(temperature)

    def network_scores(self, ctx: NetworkContext) -> dict[str, torch.Tensor]:
        batches = list(itertools.islice(ctx.batches(), self.score_batches))
        if not batches:
            raise PruningConfigError("pruner=grasp found no training batch to score the "
                                     "network with")
        with kept_state(ctx.net):
            ctx.net.train()
            return grasp_scores(ctx.net, ctx.params, batches, self.temperature)


# -- SynFlow --------------------------------------------------------------------------------------

def _shape_error() -> PruningConfigError:
    return PruningConfigError("pruner=synflow needs the data's input shape for its all-ones "
                              "input and this data module declares none; set "
                              "+data.input_shape=[C,H,W] or an input_shape attribute")


def _last_module(net: nn.Module) -> str:
    name, module = list(net.named_modules())[-1]
    return f"'{name}' ({type(module).__name__})" if name else type(module).__name__


class _Flow:
    """A float64 copy of a network for SynFlow: every floating-point parameter and buffer
    replaced by its absolute value (the reference's ``linearize``: ``abs_`` on the state dict),
    eval mode (BatchNorm uses its running statistics, as in the reference), and only the scored
    weights requiring gradients. Float64 because ``R`` is a product of one weight per layer along
    every path: with all weights positive it grows geometrically with depth and overflows
    float32 (3.4e38) on deep networks, where float64 reaches 1.8e308."""

    def __init__(self, net: nn.Module, names: Iterable[str], input_shape: Sequence[int] | None):
        if input_shape is None:
            raise _shape_error()
        self.net = net
        self.model = copy.deepcopy(net).double().eval()
        self.model.requires_grad_(False)
        named = dict(self.model.named_parameters())
        self.weights = {n: named[n] for n in names}
        with torch.no_grad():
            for t in itertools.chain(self.model.parameters(), self.model.buffers()):
                if t.is_floating_point():
                    t.abs_()
        for p in self.model.parameters():
            p.grad = None
        for p in self.weights.values():
            p.requires_grad_(True)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.input = torch.ones(1, *(int(d) for d in input_shape), dtype=torch.float64,
                                device=device)

    @torch.no_grad()
    def mask(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Zero the pruned weights of the copy (pruned stays pruned: masks only lose elements)."""
        for n, p in self.weights.items():
            p.mul_(masks[n].to(device=p.device, dtype=p.dtype))

    def scores(self, check: bool = False) -> dict[str, torch.Tensor]:
        """``|theta * dR/dtheta|`` (float64) with ``R = sum(model(ones))``; ``check``: raise the
        positive-path error when R is not finite and positive or every score is zero."""
        out = self.model(self.input)
        if not isinstance(out, torch.Tensor):
            raise PruningConfigError(f"pruner=synflow needs a network returning one tensor; "
                                     f"{type(self.net).__name__} returns {type(out).__name__}")
        r = out.sum()
        names = list(self.weights)
        grads = torch.autograd.grad(r, [self.weights[n] for n in names], allow_unused=True)
        scores = {n: (self.weights[n].detach() * g).abs() if g is not None
                  else torch.zeros_like(self.weights[n]) for n, g in zip(names, grads)}
        if check:
            value, size = float(r.detach()), float(out.detach().abs().sum())
            # with positive weights on a positive input the output is >= 0 along positive paths,
            # so R is its absolute sum; a normalization at the end leaves R ~ 0 (roundoff), a
            # log-softmax R < 0, and d(sum softmax)/dtheta = 0 analytically (~1e-16 * R here)
            flow = max((float(s.max()) for s in scores.values() if s.numel()), default=0.0)
            if not math.isfinite(value) or not value > 1e-9 * size:
                problem = (f"its summed output is {value:.3g} (its absolute values sum to "
                           f"{size:.3g})")
            elif not flow > 1e-12 * value:
                problem = f"its summed output ({value:.3g}) does not change with any weight"
            else:
                return scores
            raise PruningConfigError(
                f"pruner=synflow cannot score {type(self.net).__name__} (last module "
                f"{_last_module(self.net)}): on an all-ones input with every weight made "
                f"positive {problem}; SynFlow needs a network whose output grows with its weights "
                f"along a positive path, not one ending in a softmax/log-softmax or a "
                f"normalization it cannot score")
        return scores


def _rankable(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float32 scores in the same order: divided by the largest score (in float64) first, so the
    float32 selection neither overflows to inf nor ties large scores (a score under ~1e-45 of the
    largest ties at 0)."""
    top = max((float(s.max()) for s in scores.values() if s.numel()), default=0.0)
    scale = 1.0 / top if top > 0 and math.isfinite(top) else 1.0
    return {n: (s * scale).float() for n, s in scores.items()}


def synflow_check(net: nn.Module, input_shape: Sequence[int] | None,
                  names: Iterable[str] | None = None) -> None:
    """One SynFlow pass on a float64 copy of ``net`` (its weights are not changed): raises the
    one-line PruningConfigError when SynFlow cannot score it (no input shape; an output that
    does not grow with the weights along a positive path, e.g. a final softmax/log-softmax).
    ``names``: the scored parameters (default: the weights of Linear and Conv layers)."""
    _Flow(net, default_prunable(net) if names is None else names, input_shape).scores(check=True)


class SynFlow(NetworkScored):
    """SynFlow (Tanaka, Kunin, Yamins & Ganguli 2020): data-free iterative synaptic-flow pruning
    at initialization, once, to the final target; the schedule is not used and the data loader is
    never made.

    On a float64 copy of the network in eval mode with every parameter and buffer replaced by its
    absolute value (:class:`_Flow`), ``R = sum(net(ones(1, *input_shape)))`` and the score is
    ``|theta * dR/dtheta|``. Round ``k = 1 .. rounds`` prunes (in the copy) to sparsity
    ``1 - (1 - s)^(k / rounds)`` of the event's target ``s`` (the reference's exponential
    schedule); :meth:`network_scores` runs rounds ``1 .. rounds-1`` itself and returns the last
    round's scores with the weights pruned so far at ``-inf``, so that the callback's selection
    at ``s`` is round ``rounds``. Scores are rescaled by their maximum before the float32
    selection (same order; :func:`_rankable`). As in the reference, biases and normalization
    parameters enter with their absolute values and are not scored: the flow an ``|bias|``
    injects bypasses the layers before it, so the per-layer conservation (every layer's scores
    sum to ``R``) that keeps a thin layer from collapsing is exact only without biases.

    Args:
        rounds: pruning rounds (int >= 1; the paper's 100). ``rounds=1``: one-shot.
        scope, include, exclude, seed, distribution: see :class:`ScoreThenSelect`;
            granularity: unstructured only.
    """

    name = "synflow"
    #: the data's input shape, when known before training (``check_run`` then makes one pass)
    input_shape: tuple[int, ...] | None = None

    def __init__(self, rounds: int = 100, scope: str = "global",
                 granularity: str = "unstructured", include: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, include, exclude, seed, distribution=distribution)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise PruningConfigError(f"pruner.rounds={rounds!r} must be an integer >= 1")
        self.rounds = rounds

    def check_run(self, model: nn.Module, schedule: Any, sparsity: float) -> None:
        shape = self.input_shape or getattr(model, "input_shape", None)  # built models know it
        if shape is not None:
            synflow_check(model, shape, self.resolve(model))

    def _prune_copy(self, flow: _Flow, params: Mapping[str, torch.Tensor],
                    masks: Mapping[str, torch.Tensor], sparsity: float, check: bool
                    ) -> dict[str, torch.Tensor]:
        """One round in the copy: score, select at ``sparsity``, zero what it pruned."""
        scores = _rankable(flow.scores(check=check))
        with torch.no_grad():
            new = self.select(params, scores, masks, sparsity)
        flow.mask(new)
        return new

    def network_scores(self, ctx: NetworkContext) -> dict[str, torch.Tensor]:
        if self.rounds > 1 and ctx.target is None:
            raise RuntimeError("SynFlow.network_scores needs ctx.target (the event's target "
                               "sparsity) for its rounds")
        flow = _Flow(ctx.net, ctx.params, ctx.input_shape)
        masks = {n: m.bool() for n, m in ctx.masks.items()}
        flow.mask(masks)
        for k in range(1, self.rounds):
            sparsity = 1.0 - (1.0 - float(ctx.target)) ** (k / self.rounds)
            masks = self._prune_copy(flow, ctx.params, masks, sparsity, check=k == 1)
        scores = _rankable(flow.scores(check=self.rounds == 1))
        out = {}
        for n, s in scores.items():
            out[n] = s.masked_fill(~masks[n].to(s.device), float("-inf")).to(ctx.params[n].device)
        return out


__all__ = ["GraSP", "SynFlow", "grasp_scores", "network_score", "synflow_check"]
