"""Latency-aware structured pruning: channels chosen so the compacted model meets a budget.

``pruner=latency_aware hardware.latency_budget_ms=<ms>`` (with ``schedule=oneshot``):

1. **Latency table, measured on the target** (this machine, the hardware profile's threads and
   first batch size): for every channel group that can shrink (see :mod:`prunelab.graph`), the
   compacted model's latency with that group cut to
   1/8, 2/8, ... 7/8 of its channels and every other group whole. The model's latency at any
   widths is predicted as the whole model's minus the sum of the groups' savings.
2. **Greedy removal**: repeatedly remove, from the group where it costs the least accuracy per
   millisecond saved, the next 1/16 of its channels with the smallest L1 norm per weight (the
   accuracy cost is the removed channels' summed norm), until the predicted latency is within the
   budget.
3. **Check**: compact and measure; while the measurement is over the budget, continue with the
   budget lowered by the overshoot (at most 5 times).

A budget below the latency with every group at one channel cannot be met: that is an error that
names the smallest reachable latency.

Timing a candidate needs the compacted model: :meth:`LatencyModel.build` imports
:func:`prunelab.compress.compact.compact` (the one place the pruning package uses ``compress``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.errors import UserError
from prunelab.pruning.granularity import channel_keep, expand_channels
from prunelab.pruning.methods.base import PruningMethod
from prunelab.pruning.methods.channels import ChannelLayout, output_weights
from prunelab.pruning.params import PruningConfigError
from prunelab.schemas import RUNTIMES

GRID = 8  # table widths: k/GRID of a group's channels
CHUNK = 16  # greedy step: 1/CHUNK of a group's channels


class LatencyBudgetError(UserError):
    """The budget cannot be met (one-line message naming the closest reachable latency)."""


class LatencyModel:
    """Builds the compacted model for given per-group channel keeps, and times models."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], groups: list, batch: int,
                 threads: int | None, runs: int, runtime: str = "eager"):
        self.runtime = runtime
        # deployed in the default layout, whatever the training's (hardware.memory_format)
        self.model = copy.deepcopy(model).float().cpu().eval().to(
            memory_format=torch.contiguous_format)
        self.shape = tuple(input_shape)
        self.groups = groups
        self.batch = int(batch)
        self.threads = threads
        self.runs = runs
        self._calls: list[tuple[nn.Module, Any]] = []  # the last two models' runtime calls

    @torch.no_grad()
    def build(self, keeps: Mapping[int, torch.Tensor]) -> nn.Module:
        """The model compacted to ``keeps`` (group index -> bool per channel)."""
        from prunelab.compress.compact import compact

        m = copy.deepcopy(self.model)
        mods = dict(m.named_modules())
        for gi, keep in keeps.items():
            drop = ~keep
            g = self.groups[gi]
            for name in g.producers + g.followers:
                mods[name].weight[drop] = 0
                if mods[name].bias is not None:
                    mods[name].bias[drop] = 0
            for name, off in g.members:
                for attr in ("weight", "bias"):
                    t = getattr(mods[name], attr, None)
                    if t is not None and t.dim() == 1:
                        t[off:off + g.size][drop] = 0
        return compact(m, self.shape, groups=self.groups, check=False)[0].eval()

    def time(self, *models: nn.Module, rounds: int = 3) -> list[float]:
        """Median latency (ms) of each model in the runtime, timed in turn for ``rounds``
        rounds."""
        from prunelab.metrics.timing import time_alternating, time_in_turn

        if self.runtime == "eager":
            lat = time_alternating(dict(enumerate(models)), self.shape, (self.batch,), self.runs,
                                   5, rounds, self.threads)
            return [lat[i][f"batch_{self.batch}"] for i in range(len(models))]
        x = torch.randn(self.batch, *self.shape, generator=torch.Generator().manual_seed(0))
        calls = dict(enumerate(self._cached_call(m, x) for m in models))
        lat = time_in_turn(calls, self.runs, 5, rounds)
        return [lat[i] for i in range(len(models))]

    def _cached_call(self, model: nn.Module, x: torch.Tensor) -> Any:
        """:meth:`_runtime_call`, kept for the two models timed last: the table times the whole
        model beside every width, which would otherwise be lowered (exported) each time."""
        for i, (m, call) in enumerate(self._calls):
            if m is model:
                self._calls.append(self._calls.pop(i))
                return call
        call = self._runtime_call(model, x)
        self._calls = [*self._calls[-1:], (model, call)]
        return call

    def _runtime_call(self, model: nn.Module, x: torch.Tensor) -> Any:
        """A call that runs ``model`` on ``x`` in the runtime (ExecuTorch: the program lowered to
        XNNPACK, refused when an op stays outside the delegate; onnxruntime: its session)."""
        import functools

        if self.runtime == "executorch":
            from prunelab.compress.executorch_model import load_method, lower, name_ops, set_threads

            set_threads(self.threads)
            program = lower(model, self.shape, self.batch)
            if program.not_delegated:
                raise PruningConfigError(
                    f"hardware.runtime=executorch: XNNPACK does not take "
                    f"{name_ops(program.not_delegated)} of {type(self.model).__name__}; time the "
                    f"table with hardware.runtime=eager or onnxruntime")
            return functools.partial(load_method(program.buffer).execute, [x])
        from prunelab.compress.onnx_model import export_onnx, ort_session

        session = ort_session(export_onnx(model, self.shape), self.threads)
        return functools.partial(session.run, None, {"input": x.numpy()})

    def measure(self, keeps: Mapping[int, torch.Tensor]) -> float:
        return self.time(self.build(keeps))[0]


def check_runtime(runtime: Any) -> None:
    """``hardware.runtime`` is one of :data:`RUNTIMES` and installed (one-line error)."""
    if runtime not in RUNTIMES:
        raise PruningConfigError(f"hardware.runtime={runtime!r}; allowed: {', '.join(RUNTIMES)}")
    from prunelab.compress.onnx_model import onnxruntime_available

    if runtime == "executorch":
        from prunelab.compress.executorch_model import INSTALL, executorch_available

        if not executorch_available():
            raise PruningConfigError(f"hardware.runtime=executorch needs ExecuTorch: {INSTALL}")
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise PruningConfigError("hardware.runtime=onnxruntime needs onnx and onnxruntime: "
                                 "pip install 'prunelab[deploy]'")


def group_channel_scores(model: nn.Module, group) -> torch.Tensor:
    """Per channel: the sum over the group's producers of the mean |w| of its row."""
    mods = dict(model.named_modules())
    score = torch.zeros(group.size)
    for name in group.producers:
        w = mods[name].weight.detach().float().cpu()
        score += w.reshape(w.shape[0], -1).abs().mean(1)
    return score


def check_floor(budget_ms: float, floor_ms: float, full_ms: float, batch: int) -> None:
    if budget_ms < floor_ms:
        raise LatencyBudgetError(
            f"hardware.latency_budget_ms={budget_ms:g} is below the smallest reachable latency "
            f"on this target: {floor_ms:.3f} ms at batch {batch} with every layer down to one "
            f"channel (the unpruned model: {full_ms:.3f} ms); closest reachable: "
            f"latency_budget_ms={floor_ms:.3f}")


def latency_floor(model: nn.Module, input_shape: Sequence[int], prunable: Sequence[str],
                  protected: Sequence[str], batch: int = 1, threads: int | None = None,
                  runs: int = 30, runtime: str = "eager") -> tuple[float, float]:
    """(latency of ``model`` compacted with every shrinkable group at one channel, latency of
    ``model`` as it is): the range a budget can be met in. Weights do not matter, shapes do."""
    from prunelab.graph import channel_groups

    groups = channel_groups(model, input_shape)
    lat = LatencyModel(model, input_shape, groups, batch, threads, runs, runtime)
    full = lat.measure({})  # first: a model the runtime cannot take is refused before the floor
    return lat.measure(one_channel_keeps(groups, prunable, protected)), full


def one_channel_keeps(groups: list, prunable: Sequence[str],
                      protected: Sequence[str]) -> dict[int, torch.Tensor]:
    """Keeps (group index -> bool per channel) that cut every shrinkable group to its first
    channel: as far as channel pruning can go (:meth:`LatencyModel.build` makes the model)."""
    keeps = {}
    for gi in _candidates(groups, prunable, protected):
        keeps[gi] = torch.zeros(groups[gi].size, dtype=torch.bool)
        keeps[gi][0] = True
    return keeps


def _candidates(groups: list, prunable: Sequence[str], protected: Sequence[str]) -> list[int]:
    prunable_set, protected_set = set(prunable), set(protected)
    return [i for i, g in enumerate(groups)
            if g.prunable and g.producers and set(_weights(g)) <= prunable_set
            and not set(_weights(g)) & protected_set and g.size > 1]


def _weights(group) -> list[str]:
    """The weight parameters of a group's producers (``<module>.weight``)."""
    return [f"{name}.weight" for name in group.producers]


def latency_aware_keeps(model: nn.Module, input_shape: Sequence[int], prunable: Sequence[str],
                        protected: Sequence[str], old_keep: Mapping[str, torch.Tensor],
                        budget_ms: float, batch: int = 1, threads: int | None = None,
                        runs: int = 30, runtime: str = "eager"
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per prunable weight, the output channels to keep so that the compacted model measures
    within ``budget_ms``; and a report (budget, dense / predicted / achieved latency, widths)."""
    from prunelab.graph import channel_groups

    all_groups = channel_groups(model, input_shape)
    cand = _candidates(all_groups, prunable, protected)
    lat = LatencyModel(model, input_shape, all_groups, batch, threads, runs, runtime)
    start_keep = {}
    for gi in cand:
        g = all_groups[gi]
        k = torch.ones(g.size, dtype=torch.bool)
        for name in _weights(g):  # channels already pruned stay pruned
            k &= old_keep[name].cpu()
        start_keep[gi] = k
    full_model = lat.build(start_keep)
    full_ms = lat.time(full_model)[0]
    scores = {gi: group_channel_scores(model, all_groups[gi]) for gi in cand}

    def keep_lowest_removed(gi: int, width: int) -> torch.Tensor:
        s = scores[gi].masked_fill(~start_keep[gi], float("-inf"))
        order = torch.sort(s, descending=True, stable=True).indices
        keep = torch.zeros_like(start_keep[gi])
        keep[order[:width]] = True  # pruned channels sort last: never kept again
        return keep

    floor_ms = lat.measure({gi: keep_lowest_removed(gi, 1) for gi in cand})
    check_floor(budget_ms, floor_ms, full_ms, batch)
    # the latency table: saving of each group at k/GRID of its channels, each point timed in
    # turn with the whole model (A B A B ...), so that drifts of the machine cancel
    table: dict[int, list[tuple[int, float]]] = {}
    for gi in cand:
        n = int(start_keep[gi].sum())
        points = [(n, 0.0)]
        for k in range(GRID - 1, 0, -1):
            w = max(1, round(n * k / GRID))
            if w < points[-1][0]:
                keeps_w = dict(start_keep)
                keeps_w[gi] = keep_lowest_removed(gi, w)
                t_full, t_w = lat.time(full_model, lat.build(keeps_w))
                points.append((w, max(0.0, t_full - t_w)))
        table[gi] = points

    def saving(gi: int, w: int) -> float:
        pts = table[gi]
        for (w1, s1), (w2, s2) in zip(pts, pts[1:]):
            if w2 <= w <= w1:
                return s1 + (s2 - s1) * (w1 - w) / max(w1 - w2, 1)
        return pts[-1][1]

    widths = {gi: int(start_keep[gi].sum()) for gi in cand}
    # per group, the kept channels' scores from the smallest up (the order they are removed in)
    order_scores = {gi: torch.sort(scores[gi][start_keep[gi]]).values for gi in cand}
    target = budget_ms
    achieved = full_ms
    checks = []
    for _ in range(6):
        predicted = full_ms - sum(saving(gi, widths[gi]) for gi in cand)
        while predicted > target:
            best, best_rate = None, None
            for gi in cand:
                n0 = int(start_keep[gi].sum())
                step = max(1, n0 // CHUNK)
                s_now = saving(gi, widths[gi])
                removed = n0 - widths[gi]
                for w in range(widths[gi] - step, 0, -step):
                    gain = saving(gi, w) - s_now
                    if gain <= 1e-9:
                        continue  # no measured saving yet: look at a smaller width
                    cost = float(order_scores[gi][removed:n0 - w].sum())
                    rate = cost / gain
                    if best_rate is None or rate < best_rate:
                        best, best_rate = (gi, w), rate
                    break  # the first width that saves time, per group
            if best is None:
                break  # no removal is measured to save time: stop here
            widths[best[0]] = best[1]
            predicted = full_ms - sum(saving(gi, widths[gi]) for gi in cand)
        keeps = {gi: keep_lowest_removed(gi, widths[gi]) for gi in cand}
        achieved = lat.time(lat.build(keeps))[0]
        checks.append({"predicted_ms": predicted, "measured_ms": achieved})
        if achieved <= budget_ms:
            break
        target -= achieved - budget_ms
    keeps = {gi: keep_lowest_removed(gi, widths[gi]) for gi in cand}
    out = {}
    for gi, keep in keeps.items():
        for name in _weights(all_groups[gi]):
            out[name] = keep.to(old_keep[name].device) & old_keep[name]
    report = {"budget_ms": budget_ms, "batch": batch, "threads": threads, "runtime": runtime,
              "dense_ms": full_ms,
              "floor_ms": floor_ms, "achieved_ms": achieved, "met": achieved <= budget_ms,
              "checks": checks,
              "widths": {",".join(all_groups[gi].producers): [int(start_keep[gi].sum()),
                                                               widths[gi]] for gi in cand}}
    return out, report


class LatencyAware(PruningMethod):
    """Whole channels chosen so that the compacted model meets ``latency_budget_ms`` on this
    machine (the module docstring has the procedure). Prunes once: the schedule must be
    ``oneshot``; ``sparsity`` does not decide how much goes, the budget does.

    Args:
        latency_budget_ms: the compacted model's latency budget (ms, > 0).
        latency_batch_size, latency_threads: where that latency is measured.
        latency_runtime: what runs it (``hardware.runtime``): ``eager`` (PyTorch), ``executorch``
            (programs lowered to XNNPACK; the ``executorch`` extra) or ``onnxruntime``.
        include, exclude: which parameters (see :class:`PruningMethod`).
    """

    name = "latency_aware"
    needs = frozenset({"latency"})
    granularity = "structured"

    def __init__(self, latency_budget_ms: float | None = None, latency_batch_size: int = 1,
                 latency_threads: int | None = None, latency_runtime: str = "eager",
                 include: Sequence[str] | None = None, exclude: Sequence[str] = ()):
        super().__init__(include, exclude)
        check_runtime(latency_runtime)
        self.latency_runtime = latency_runtime
        if (not isinstance(latency_budget_ms, (int, float)) or isinstance(latency_budget_ms, bool)
                or latency_budget_ms <= 0):
            raise PruningConfigError(f"pruner=latency_aware needs hardware.latency_budget_ms="
                                     f"<milliseconds > 0>, got {latency_budget_ms!r}")
        self.latency_budget_ms = float(latency_budget_ms)
        self.latency_batch_size = int(latency_batch_size)
        self.latency_threads = latency_threads
        self._layout = ChannelLayout()
        self._model: nn.Module | None = None
        self._report: dict[str, Any] | None = None

    def bindings(self, model: nn.Module) -> tuple[dict[str, nn.Parameter], dict | None]:
        params = self.resolve(model)
        self._layout = ChannelLayout.of(model, params)
        self._model = model
        return params, self._layout.coupled

    @property
    def _protected(self) -> frozenset[str]:
        return self._layout.protected

    def max_sparsity(self, params: Mapping[str, torch.Tensor]) -> float:
        return self._layout.reach(params)

    def latency_range(self, model: nn.Module) -> tuple[float, float]:
        """(smallest reachable, current) latency in ms of ``model``."""
        params = self.resolve(model)
        protected = sorted(output_weights(model, params))
        return latency_floor(model, model.input_shape, list(params), protected,
                             self.latency_batch_size, self.latency_threads,
                             runtime=self.latency_runtime)

    def check_run(self, model: nn.Module, schedule: Any, sparsity: float) -> None:
        """The schedule must prune once, and the budget must be reachable on this machine."""
        from prunelab.pruning.schedules import OneShot

        if not isinstance(schedule, OneShot):
            raise PruningConfigError(f"pruner=latency_aware prunes once: use schedule=oneshot "
                                     f"(got schedule={getattr(schedule, 'name', schedule)})")
        floor_ms, full_ms = self.latency_range(model)
        check_floor(self.latency_budget_ms, floor_ms, full_ms, self.latency_batch_size)

    @torch.no_grad()
    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """Masks meeting the budget (``target`` is not used: the budget decides)."""
        if self._model is None:
            raise PruningConfigError("pruner=latency_aware must be bound to a model first "
                                     "(prepare or bindings)")
        keeps, self._report = latency_aware_keeps(
            self._model, self._model.input_shape, list(params), sorted(self._layout.protected),
            {n: channel_keep(old_masks[n]) for n in params}, self.latency_budget_ms,
            self.latency_batch_size, self.latency_threads, runtime=self.latency_runtime)
        return {n: (expand_channels(keeps[n], params[n].shape) if n in keeps else old_masks[n])
                for n in params}

    def describe(self) -> dict[str, Any]:
        """Also under ``latency_aware``, the key results.json has always used for it."""
        return {**super().describe(), "latency_aware": self.report()}

    def report(self) -> dict[str, Any] | None:
        """The latency report of the last pruning event: budget, batch, threads, dense / floor /
        achieved latency (ms), whether the budget was met, the checks and per-group widths."""
        return self._report

    def state_dict(self) -> dict:
        """The report travels in checkpoints: a run resumed after its pruning event keeps it."""
        return {"report": self._report}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._report = state.get("report", self._report)
