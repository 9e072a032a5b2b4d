"""``PruningCallback``: applies a pruning method on a schedule during Lightning training.

Bookkeeping only; the maths lives in the method classes (:mod:`prunelab.pruning.methods`). The
callback reads what a method declares, never its name: ``is_dense``, ``at_init`` (one event at
epoch 0, the schedule unused), ``needs`` (``gradients``: |w * dL/dw| accumulated during the epoch
before each event; ``calibration``, or ``gradients`` with nothing gathered yet: a pass over
``score_batches`` training batches), and ``may_regrow`` (otherwise a mask that revives a pruned
weight is refused).

- ``setup``: resolves the prunable parameters of ``pl_module.net`` and validates the schedule
  against ``trainer.max_epochs``.
- ``on_train_epoch_start``: if the schedule has an event at this epoch, recompute the masks at the
  event's cumulative target and zero the pruned weights.
- after every optimizer step (a step post-hook): re-apply the masks (one fused multiply), so
  momentum, weight decay or Adam's moments never regrow a pruned weight; a ``dynamic`` method
  (SET, RigL) first moves its masks when ``due``: the regrown weights start at zero and the
  optimizer's moments of the moved weights are reset.
- ``network`` methods (GraSP, SynFlow) score the network itself before an event
  (``network_scores``); a data-free one never creates the loader.
- ``state_dict``/``load_state_dict``: masks, the events already applied and the rewind snapshot
  travel in Lightning checkpoints and come back on resume.
"""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
import torch

from prunelab.config import validate_sparsity
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.gather import gather_from_batches, network_stats, target_network
from prunelab.pruning.methods.base import PruningMethod
from prunelab.pruning.params import PruningConfigError
from prunelab.pruning.progress import total_optimizer_steps
from prunelab.pruning.rewinding import RoundRewinder
from prunelab.pruning.schedules import Schedule


class PruningCallback(pl.Callback):
    """Prune ``pl_module.net`` with ``pruner`` following ``schedule`` up to ``sparsity``.

    Args:
        pruner: the pruning method (which parameters, and how masks are chosen).
        schedule: epoch -> cumulative target.
        sparsity: the final total target (fraction of prunable weights that are zero), in [0, 1).
        rewind_step: if set, snapshot the network's weights after exactly this many optimizer
            steps (0 = before the first step) and keep them in the callback state (lottery
            tickets).
        log_per_layer: log every tensor's sparsity each epoch (``sparsity/<name>``).
    """

    def __init__(self, pruner: PruningMethod, schedule: Schedule, sparsity: float,
                 rewind_step: int | None = None, log_per_layer: bool = True):
        sparsity = validate_sparsity(sparsity)
        if sparsity > 0:
            pruner.check_sparsity(sparsity)
        self.pruner = pruner
        self.schedule = schedule
        self.sparsity = float(sparsity)
        self.rewind_step = rewind_step
        self.log_per_layer = log_per_layer
        self.masks: MaskSet | None = None
        self.events_done: list[int] = []
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._wg: dict[str, torch.Tensor] | None = None  # accumulated |w * grad| (gradient scores)
        self._accumulating = False
        self.rank_check: dict[str, Any] = {}  # DDP: masks gathered and compared after each event
        self._step_hooks: list[Any] = []  # optimizer step post-hooks (removed at teardown)
        self._counted: Any = None  # the optimizer whose steps are counted (rewind_step)
        self._snapshot_at: int | None = None  # optimizer steps done when rewind_state was taken
        self._trainer: pl.Trainer | None = None  # set while training (the step hook needs it)
        self._fast_dev_run = False  # Lightning's smoke test: the final target at epoch 0
        self._total_steps = 0  # optimizer steps of the whole run (dynamic methods' schedule)
        self._steps_per_epoch = 0  # ... per epoch (step events, rewinding a step-wise LR)
        self.warnings: list[str] = []  # printed once, for results.json (a dynamic method idle)
        # schedule.rewind: learning rate or weights set back after each round (iterative)
        self.rewinder = RoundRewinder(  # one event before training (at_init): nothing to rewind
            "none" if pruner.at_init else getattr(schedule, "rewind", "none"),
            getattr(schedule, "rewind_epoch", 0))
        # schedule.every_steps: events at optimizer steps ({steps done: target}, set at train start)
        self.step_events: dict[int, float] = {}
        self.steps_done: list[int] = []
        if self.by_steps and pruner.needs & {"gradients", "calibration", "network"}:
            raise PruningConfigError(
                f"schedule.every_steps prunes between optimizer steps, but pruner={pruner.name} "
                f"gathers scores over batches before each event; allowed with it: "
                f"schedule.every_steps=null (one event per epoch)")

    # -- schedule position ----------------------------------------------------------------------
    @property
    def events(self) -> dict[int, float]:
        if self.pruner.is_dense or self.sparsity == 0:
            return {}
        if self.pruner.at_init or self._fast_dev_run:
            return {0: self.sparsity}
        return self.schedule.events(self.sparsity)

    @property
    def by_steps(self) -> bool:
        """Whether the events are at optimizer steps (``schedule.every_steps``)."""
        return (getattr(self.schedule, "every_steps", None) is not None and bool(self.events)
                and not self.pruner.at_init and not self._fast_dev_run)

    def at_target(self) -> bool:
        """Whether every scheduled pruning event has been applied."""
        if self.by_steps:
            return bool(self.step_events) and all(t in self.steps_done for t in self.step_events)
        return all(e in self.events_done for e in self.events)

    def current_target(self) -> float:
        if self.by_steps:
            done = [self.step_events[t] for t in self.steps_done if t in self.step_events]
        else:
            done = [self.events[e] for e in self.events_done if e in self.events]
        return max(done) if done else 0.0

    def _step_events_due(self, steps: int, only: bool = False) -> None:
        """Apply the step events due after ``steps`` optimizer steps (``only``: that one)."""
        for t in sorted(self.step_events):
            if (t == steps or (not only and t <= steps)) and t not in self.steps_done:
                self.prune_to(self.step_events[t], event=len(self.steps_done))
                self.steps_done.append(t)

    # -- lifecycle ------------------------------------------------------------------------------
    def bind(self, net: torch.nn.Module) -> MaskSet:
        """Resolve the prunable parameters of ``net`` (idempotent)."""
        if self.masks is None:
            self.masks = self.pruner.prepare(net)
            reach = self.pruner.max_sparsity(self.masks.params)
            if self.sparsity > reach:
                raise PruningConfigError(
                    f"sparsity={self.sparsity} is beyond what pruner={self.pruner.name} can reach "
                    f"on this model ({reach:.4f}: the output layer and one channel per layer stay)")
            if self._pending is not None:
                self._load(self._pending)
                self._pending = None
        return self.masks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.bind(target_network(pl_module))
        # trainer.fast_dev_run runs one batch of one epoch: prune to the final target at once
        self._fast_dev_run = bool(getattr(trainer, "fast_dev_run", False))
        if self._fast_dev_run:  # the final target at once: no rounds to rewind between
            self.rewinder.mode = "none"
        if stage == "fit" and self.events and not self.pruner.at_init and not self._fast_dev_run:
            self.schedule.validate(trainer.max_epochs, self.sparsity)
            self.rewinder.check(self.events)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.masks is not None
        # parameters may have been moved or replaced (device transfer, checkpoint restore)
        self.masks.rebind(*self.pruner.bindings(target_network(pl_module)))
        self.masks.apply_()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Masks are re-applied after every optimizer step, by a step post-hook on the optimizer:
        # this holds whatever the training step does (also several steps per Lightning batch,
        # data.steps_per_batch), and the rewind snapshot is taken after exactly rewind_step steps.
        self._remove_step_hooks()
        self._trainer = trainer
        opts = [o for o in trainer.optimizers if hasattr(o, "register_step_post_hook")]
        if (len(opts) < len(trainer.optimizers)
                and getattr(trainer.datamodule, "steps_per_batch", 1) > 1):
            raise PruningConfigError("data.steps_per_batch > 1 needs optimizers with step hooks "
                                     "(torch.optim.Optimizer subclasses); allowed otherwise: 1")
        self._counted = opts[0] if opts else None
        if self.pruner.dynamic and len(opts) != 1:
            raise PruningConfigError(f"pruner={self.pruner.name} moves its masks after optimizer "
                                     f"steps: it needs exactly one torch.optim.Optimizer "
                                     f"(this run has {len(trainer.optimizers)} optimizers)")
        self._total_steps = total_optimizer_steps(trainer)
        if self.pruner.dynamic:
            self._warn_if_idle(self._total_steps, trainer.is_global_zero)
        self._steps_per_epoch = self._total_steps // max(int(trainer.max_epochs or 1), 1)
        if self.by_steps:
            self.step_events = self.schedule.step_events(self.sparsity, self._steps_per_epoch)
        self._step_hooks = [o.register_step_post_hook(self._after_optimizer_step) for o in opts]

    def _warn_if_idle(self, total: int, prints: bool = True) -> None:
        """A dynamic method whose first update (step ``delta_t``) falls after ``t_end`` of the
        run never moves a mask: static sparse training under its name. One warning."""
        p = self.pruner
        if p.due(p.delta_t, total):  # the first update
            return
        msg = (f"pruner={p.name} moves its masks every pruner.delta_t={p.delta_t} optimizer "
               f"steps until t_end={p.t_end:g} of the run, but the run has {total} steps: no "
               f"mask will move (static sparse training); lower pruner.delta_t or train longer")
        if msg not in self.warnings:  # not again after a resume (the checkpoint holds it)
            self.warnings.append(msg)
            if prints:  # once under DDP: rank 0, as the module's own warning
                print(f"prunelab: warning: {msg}", file=sys.stderr)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if optimizer is self._counted:  # Lightning counts this step once the hook returns
            step = self._trainer.global_step + 1
            if (self.pruner.dynamic and self.events_done
                    and self.pruner.due(step, self._total_steps)):
                self._move_masks(optimizer, step)
            if self.step_events:
                self._step_events_due(step, only=True)
            self.masks.apply_()
            self._snapshot_if_due(step)
        else:
            self.masks.apply_()

    @torch.no_grad()
    def _move_masks(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """A dynamic method's update: new masks at the same sparsity; the regrown weights set to
        zero and the optimizer state of every moved weight (dropped or regrown) reset."""
        params = self.masks.params
        old = self.masks.as_dict()
        new = self.pruner.update(params, old, step, self._total_steps)
        self.masks.update(new, allow_regrow=True)
        for n, p in params.items():
            moved = old[n] != self.masks[n]
            grown = moved & self.masks[n]
            p[grown] = 0.0
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value[moved] = 0

    def _snapshot_if_due(self, steps: int, retake: bool = False) -> None:
        """Snapshot the weights once ``steps`` optimizer steps are done; ``retake``: again if
        no step was taken since the snapshot (a pruning event at the epoch start came after)."""
        if self.rewind_step is None or steps < self.rewind_step:
            return
        if self.rewind_state is None or (retake and self._snapshot_at == steps):
            net = target_network(self._trainer.lightning_module)
            self.rewind_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            self._snapshot_at = steps

    def _remove_step_hooks(self) -> None:
        for h in self._step_hooks:
            h.remove()
        self._step_hooks = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_step_hooks()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._remove_step_hooks()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._step_hooks:  # an optimizer without step hooks: per batch instead
            self._snapshot_if_due(int(trainer.global_step))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        events = {} if self.by_steps else self.events
        target = events.get(epoch)
        if self.by_steps:  # the events at step 0 (or missed by a resume) come now
            self._step_events_due(int(trainer.global_step))
        self.rewinder.snapshot(trainer, target_network(pl_module), epoch)
        if target is not None and epoch not in self.events_done:
            stats = None
            if "network" in self.pruner.needs:
                stats = network_stats(self.pruner, self.masks, trainer, pl_module, target)
            elif self.pruner.needs_gradients:
                if self._wg is None:  # nothing gathered (event at epoch 0, at_init, or a resume)
                    self._wg = gather_from_batches(self.pruner, self.masks, trainer, pl_module)
                stats = self._reduced_stats(trainer)
            self.prune_to(target, event=len(self.events_done), stats=stats)
            self.events_done.append(epoch)
            self.rewinder.after_round(trainer, target_network(pl_module), self.masks, epoch,
                                      events, self._steps_per_epoch)
            if trainer.world_size > 1:
                self.check_ranks(trainer)
            if self.pruner.accumulate == "epoch":
                self._wg = None
        # the rewind point at an epoch boundary (or 0) comes after this epoch's pruning event
        if self._trainer is not None:
            self._snapshot_if_due(int(trainer.global_step), retake=True)
        # gradient scores: accumulated during the epoch before the next event only ("epoch"), or
        # over every step from the start while events remain ("run": movement pruning)
        later = [e for e in events if e > epoch and e not in self.events_done]
        self._accumulating = "gradients" in self.pruner.needs and (
            epoch + 1 in later if self.pruner.accumulate == "epoch" else bool(later))
        if self._accumulating and (self.pruner.accumulate == "epoch" or self._wg is None):
            self._wg = {n: torch.zeros_like(p, dtype=torch.float32)
                        for n, p in self.masks.params.items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._accumulating:
            return
        with torch.no_grad():
            for n, p in self.masks.params.items():
                if p.grad is not None:
                    self._wg[n].add_(self.pruner.step_statistic(p.detach(), p.grad).float())

    def _reduced_stats(self, trainer: pl.Trainer) -> dict[str, dict]:
        """Per-parameter stats for the score functions; summed across ranks under DDP so that
        every rank selects the same masks."""
        out = {}
        for n, t in self._wg.items():
            if trainer.world_size > 1:
                t = trainer.strategy.reduce(t, reduce_op="sum")
            out[n] = {"wg": t}
        return out

    @torch.no_grad()
    def check_ranks(self, trainer: pl.Trainer) -> None:
        """Gather every rank's masks and check they are identical (DDP): a mismatch would let
        the ranks train different networks, so it stops the run."""
        flat = torch.cat([self.masks[n].reshape(-1) for n in self.masks]).to(torch.uint8)
        gathered = trainer.strategy.all_gather(flat)  # (world_size, numel)
        equal = bool((gathered == gathered[0:1]).all())
        self.rank_check = {"world_size": int(trainer.world_size), "masks_equal": equal,
                           "events_checked": self.rank_check.get("events_checked", 0) + 1}
        if not equal:
            raise RuntimeError(f"pruning masks differ across the {trainer.world_size} DDP ranks "
                               f"after pruning event {len(self.events_done)}")

    @torch.no_grad()
    def prune_to(self, target: float, event: int = 0, stats: dict | None = None) -> None:
        """Recompute the masks at the cumulative ``target`` and zero the pruned weights."""
        assert self.masks is not None
        new = self.pruner.compute_masks(self.masks.params, self.masks.as_dict(), target,
                                        event=event, stats=stats)
        self.set_masks(new)

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Replace the masks (validated; monotone unless the method's ``may_regrow``) and zero
        the pruned weights, e.g. a lottery level's masks chosen between levels. Call after
        :meth:`bind`."""
        if self.masks is None:
            raise RuntimeError("set_masks needs bound masks: call bind(net) first")
        self.masks.update(masks, allow_regrow=self.pruner.may_regrow)
        self.masks.apply_()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._step_hooks:
            self.masks.apply_()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1 and (self.pruner.dynamic or self.by_steps):
            self.check_ranks(trainer)  # masks moved (or pruned) between steps: still equal?
        stats = self.masks.stats()
        # the same value on every rank (masks are checked equal): sync_dist only silences
        # Lightning's distributed-logging advice
        sync = trainer.world_size > 1
        pl_module.log("prune/sparsity", stats["global"], prog_bar=True, sync_dist=sync)
        pl_module.log("prune/target", self.current_target(), sync_dist=sync)
        pl_module.log("prune/at_target", float(self.at_target()), sync_dist=sync)
        if self.log_per_layer:
            for name, s in stats["per_layer"].items():
                pl_module.log(f"sparsity/{name}", s, sync_dist=sync)

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "events_done": list(self.events_done),
            "sparsity": self.sparsity,
            "pruner": self.pruner.name,
            "rewind_state": self.rewind_state,
            "wg": None if self._wg is None else {k: v.detach().cpu() for k, v in self._wg.items()},
            "accumulating": self._accumulating,
            "steps_done": list(self.steps_done),
            "method": self.pruner.state_dict(),
            "rewinder": self.rewinder.state_dict(),
            "warnings": list(self.warnings),  # a resume past on_train_start keeps them
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warnings += [w for w in state_dict.get("warnings", []) if w not in self.warnings]
        if self.masks is None:
            self._pending = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("masks") is not None:
            self.masks.load_state_dict(state["masks"])
        self.events_done = list(state.get("events_done", []))
        self.rewind_state = state.get("rewind_state")
        wg = state.get("wg")
        if wg is not None:
            params = self.masks.params
            self._wg = {k: v.to(params[k].device) for k, v in wg.items()}
        self._accumulating = bool(state.get("accumulating", False))
        self.pruner.load_state_dict(state.get("method") or {})
        self.steps_done = list(state.get("steps_done", []))
        self.rewinder.load_state_dict(state.get("rewinder"))
