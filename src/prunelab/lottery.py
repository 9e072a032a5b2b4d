"""Lottery-ticket experiments: ``python -m prunelab.lottery experiment=lth_lenet300``.

Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020). Level 0
trains the dense network from its initialization θ0 and keeps the rewind weights θk (k =
``lottery.rewind_step``; k = 0 is θ0). Every later level ``l``:

1. prunes ``prune_fraction`` of the weights still remaining in each layer, by magnitude of the
   weights level ``l-1`` ended with (cumulative target ``1 - (1 - p)^l`` per tensor, so the
   density after level L is ``(1 - p)^L`` to one element; layer or global scope);
2. rewinds: the start weights are ``θk * mask`` (all other parameters and buffers: ``θk``);
3. trains with a fresh optimizer and learning-rate schedule (a new Lightning ``Trainer``) while
   :class:`~prunelab.pruning.PruningCallback` keeps the pruned weights at zero.

Controls (``lottery.control``), as in the paper: ``random_reinit`` trains the ticket's masks from
a fresh random initialization; ``random_mask`` trains masks with the ticket's per-layer sparsity
at random positions (nested across levels) from θk. A control takes its masks from a ticket run:
``lottery.masks_from=<finished ticket run>``, or else it trains the ticket itself in
``<run>/ticket/``.

On disk (everything a level writes is complete before its ``results.json``, written last)::

    <run>/lottery.json       the config (checked on every rerun), overrides
    <run>/init.pt, rewind.pt θ0 and θk
    <run>/level_XX/          mask.pt, start.pt, end.pt, results.json, checkpoints/, csv/
    <run>/summary.md|csv, lottery.png   after every level

Rerunning the same command (the run directory is named by the overrides) resumes at the first
level without ``results.json`` (from its ``checkpoints/last.ckpt`` when there is one) and never
touches a finished level.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prunelab.train import (
    CONF_DIR,
    ConfigError,
    _as_config_error,
    _choice,
    _target_name,
    check_overrides,
    cli_main,
    run_task,
)

CONTROLS = ("none", "random_reinit", "random_mask")
SCOPES = ("layer", "global")
LOTTERY_GROUPS = ("data", "model", "optimizer", "lr_scheduler", "hardware", "trainer", "logger",
                  "experiment", "debug")
#: Keys that may differ between invocations on one run directory (length, where masks come
#: from, and settings that do not change results).
FREE_KEYS = ("resume", "lottery.levels", "lottery.masks_from", "logger", "hydra", "hardware.threads",
             "trainer.enable_progress_bar", "trainer.enable_model_summary",
             "trainer.log_every_n_steps")
#: Keys in which a control run and the ticket run it takes masks from may differ.
CONTROL_KEYS = ("lottery.control",)


# -- validation ------------------------------------------------------------------------------------
def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name}={value!r} is outside the allowed range (0, 1)")
    return float(value)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """The checked lottery settings (no heavy import). Raises ConfigError."""
    lc = cfg.lottery
    out = {
        "levels": _count("lottery.levels", lc.levels, 1),
        "prune_fraction": _fraction("lottery.prune_fraction", lc.prune_fraction),
        "output_fraction": (None if lc.output_fraction is None
                            else _fraction("lottery.output_fraction", lc.output_fraction)),
        "layer_fractions": {str(k): _fraction(f"lottery.layer_fractions.{k}", v)
                            for k, v in (lc.layer_fractions or {}).items()},
        "epochs": _count("epochs", cfg.epochs, 1),
        "rewind_step": _count("lottery.rewind_step", lc.rewind_step, 0),
        "rewind_epoch": (None if lc.rewind_epoch is None
                         else _count("lottery.rewind_epoch", lc.rewind_epoch, 0)),
    }
    if lc.control not in CONTROLS:
        raise ConfigError(f"lottery.control={lc.control!r}; allowed: {', '.join(CONTROLS)}")
    if lc.scope not in SCOPES:
        raise ConfigError(f"lottery.scope={lc.scope!r}; allowed: {', '.join(SCOPES)}")
    if out["rewind_epoch"] is not None and out["rewind_step"]:
        raise ConfigError(f"lottery.rewind_step={out['rewind_step']} and lottery.rewind_epoch="
                          f"{out['rewind_epoch']}: set one of them")
    if out["rewind_epoch"] is not None and out["rewind_epoch"] >= out["epochs"]:
        raise ConfigError(f"lottery.rewind_epoch={out['rewind_epoch']} is beyond level 0's "
                          f"length: allowed 0..{out['epochs'] - 1} (epochs={out['epochs']})")
    return out


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the keys in :data:`FREE_KEYS` (what a rerun must match)."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    flat = _flatten(resolved)
    return {k: v for k, v in flat.items()
            if not any(k == f or k.startswith(f + ".") for f in FREE_KEYS)}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                ignore: Sequence[str] = ()) -> list[str]:
    """``key (old vs new)`` for every key whose value differs."""
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{k} ({old.get(k, '<unset>')!r} vs {new.get(k, '<unset>')!r})"
            for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]


# -- masks -----------------------------------------------------------------------------------------
def layer_fractions(names: Sequence[str], output_layer: str | None, settings: Mapping[str, Any]
                    ) -> dict[str, float]:
    """Per-level prune fraction of every prunable tensor: the first matching glob of
    ``layer_fractions``, else ``output_fraction`` for the output layer, else ``prune_fraction``.
    Only tensors that differ from ``prune_fraction`` are returned."""
    out = {}
    for n in names:
        for pattern, frac in settings["layer_fractions"].items():
            if fnmatch.fnmatchcase(n, pattern):
                out[n] = frac
                break
        else:
            if output_layer and settings["output_fraction"] is not None \
                    and n.rsplit(".", 1)[0] == output_layer:
                out[n] = settings["output_fraction"]
    return out


def imp_masks(weights: Mapping[str, Any], old: Mapping[str, Any], level: int, fraction: float,
              own: Mapping[str, float], scope: str) -> dict[str, Any]:
    """Masks of ``level`` by weight magnitude: cumulative target ``1 - (1 - f)^level`` per tensor
    (layer scope) or over all tensors without their own fraction (global scope)."""
    from prunelab.pruning.selection import select_masks

    scores = {n: w.detach().abs() for n, w in weights.items()}
    targets = {n: 1.0 - (1.0 - own.get(n, fraction)) ** level for n in weights}
    if scope == "layer":
        return select_masks(scores, old, targets, "layer")
    shared = [n for n in weights if n not in own]
    out = {}
    if shared:
        out.update(select_masks({n: scores[n] for n in shared}, {n: old[n] for n in shared},
                                1.0 - (1.0 - fraction) ** level, "global"))
    for n in own:
        out.update(select_masks({n: scores[n]}, {n: old[n]}, {n: targets[n]}, "layer"))
    return {n: out[n] for n in weights}


def random_masks(like: Mapping[str, Any], old: Mapping[str, Any], generator) -> dict[str, Any]:
    """Masks with the per-tensor sparsity of ``like`` at random positions inside ``old`` (so the
    random masks are nested across levels too)."""
    import torch

    from prunelab.pruning.selection import select_masks

    scores = {n: torch.rand(m.shape, generator=generator) for n, m in like.items()}
    targets = {n: float((~m).sum()) / m.numel() for n, m in like.items()}
    return select_masks(scores, {n: old[n].cpu() for n in like}, targets, "layer")


def density(masks: Mapping[str, Any]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


# -- files -----------------------------------------------------------------------------------------
def save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def level_dir(run_dir: Path, level: int) -> Path:
    return run_dir / f"level_{level:02d}"


def level_done(run_dir: Path, level: int) -> bool:
    return (level_dir(run_dir, level) / "results.json").is_file()


def read_levels(run_dir: Path) -> list[dict[str, Any]]:
    """The results of the finished levels of a run, in level order."""
    rows = []
    for path in sorted(Path(run_dir).glob("level_*/results.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(rows, key=lambda r: r["level"])


# -- one run ---------------------------------------------------------------------------------------
class LotteryRun:
    """One lottery run (one control, one seed) in ``run_dir``.

    ``callbacks``: extra Lightning callbacks given to every level's Trainer (tests use them to
    look at the weights and the optimizer at the start of a level)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, *, internal: bool = False,
                 callbacks: Sequence[Any] = (), log: Callable[[str], None] = print):
        self.cfg = cfg
        self.settings = validate(cfg)
        self.control = str(cfg.lottery.control)
        self.scope = str(cfg.lottery.scope)
        self.dir = Path(run_dir)
        self.internal = internal
        self.callbacks = list(callbacks)
        self.log = log
        self.config = result_config(cfg)
        self._dm = None
        self._names: list[str] | None = None
        self._own: dict[str, float] | None = None
        self.ticket: LotteryRun | None = None  # controls: where the masks come from
        self._ticket_external = False
        self._checked = False

    # -- set-up ------------------------------------------------------------------------------
    def _ticket_cfg(self) -> DictConfig:
        cfg = copy.deepcopy(self.cfg)
        with _unlocked(cfg):
            cfg.lottery.control = "none"
            cfg.lottery.masks_from = None
        return cfg

    def check(self) -> None:
        """Validate everything before anything is written (ConfigError). Idempotent."""
        if self._checked:
            return
        meta = self.dir / "lottery.json"
        if meta.is_file():
            old = json.loads(meta.read_text())["config"]
            diff = config_diff(old, self.config)
            if diff:
                raise ConfigError(f"{self.dir} holds a lottery run with a different config: "
                                  f"{'; '.join(diff)}; rerun with its settings or use a new "
                                  f"directory")
        self._setup()
        masks_from = self.cfg.lottery.masks_from
        if self.control != "none":
            if masks_from:
                src = self._find_ticket(Path(str(masks_from)))
                self.ticket = LotteryRun(self._ticket_cfg(), src, log=self.log)
                self._ticket_external = True
            else:
                self.ticket = LotteryRun(self._ticket_cfg(), self.dir / "ticket", internal=True,
                                         log=self.log)
            self.ticket._share_setup(self)
            self.ticket.check()
        self._checked = True

    def _find_ticket(self, src: Path) -> Path:
        """The ticket run (``lottery.control=none``, same config otherwise) at ``src`` or, if
        ``src`` is not a run itself, the one among the runs below it."""
        name = f"lottery.masks_from={str(src)!r}"
        if (src / "lottery.json").is_file():
            other = json.loads((src / "lottery.json").read_text())["config"]
            diff = config_diff(other, self.config, ignore=CONTROL_KEYS)
            if other.get("lottery.control") != "none" or diff:
                raise ConfigError(f"{name} is not the ticket run of this config: "
                                  f"{'; '.join(diff) or 'its lottery.control is not none'}")
            return src
        if not src.is_dir():
            raise ConfigError(f"{name} does not exist; allowed: a ticket run directory "
                              f"(lottery.control=none) or a directory holding one")
        for meta in sorted(src.rglob("lottery.json")):
            info = json.loads(meta.read_text())
            other = info["config"]
            if not info.get("internal") and other.get("lottery.control") == "none" \
                    and not config_diff(other, self.config, ignore=CONTROL_KEYS):
                return meta.parent
        raise ConfigError(f"{name} holds no ticket run (lottery.control=none) with this config; "
                          f"run it first with the same settings and lottery.control=none")

    def _share_setup(self, other: LotteryRun) -> None:
        """Use another run's data and model facts (a control and its ticket share them)."""
        for key in ("_dm", "_names", "_own", "_steps_per_epoch", "_shape", "_classes"):
            setattr(self, key, getattr(other, key))

    def _setup(self) -> None:
        """Instantiate the data and a model once, check the rewind step against level 0."""
        if self._dm is not None:
            return
        from prunelab.models import check_input_fits, output_layer_name
        from prunelab.pruning import Pruner

        try:
            dm = instantiate(self.cfg.data)
            self._shape, self._classes = tuple(dm.input_shape), int(dm.num_classes)
            net = self._new_net()
            check_input_fits(net, tuple(dm.input_shape), _choice("model",
                                                                  _target_name(self.cfg.model)))
            pruner = Pruner(name="none", score=None, include=self.cfg.lottery.include,
                            exclude=self.cfg.lottery.exclude)
            names = list(pruner.resolve(net))
            try:
                out_layer = output_layer_name(net)
            except (AttributeError, ValueError):
                out_layer = None
            unknown = [p for p in self.settings["layer_fractions"]
                       if not any(fnmatch.fnmatchcase(n, p) for n in names)]
            if unknown:
                raise ConfigError(f"lottery.layer_fractions pattern {unknown[0]!r} matches no "
                                  f"prunable parameter; prunable: {', '.join(names)}")
            instantiate(self.cfg.optimizer)(params=list(net.parameters()))
            dm.setup("fit")
            batches = getattr(dm, "train_batches", dm.train_dataloader)()  # not grouped
            steps = len(batches) * self.settings["epochs"]
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - user-input errors become one line
            raise _as_config_error(exc) from exc
        rewind = self.rewind_step(steps // self.settings["epochs"])
        if rewind >= steps:
            raise ConfigError(f"lottery.rewind_step={rewind} is beyond level 0's length: allowed "
                              f"0..{steps - 1} ({self.settings['epochs']} epochs of "
                              f"{steps // self.settings['epochs']} iterations)")
        self._dm, self._names = dm, names
        self._own = layer_fractions(names, out_layer, self.settings)
        self._steps_per_epoch = steps // self.settings["epochs"]

    def rewind_step(self, steps_per_epoch: int) -> int:
        if self.settings["rewind_epoch"] is not None:
            return self.settings["rewind_epoch"] * steps_per_epoch
        return self.settings["rewind_step"]

    def _new_net(self, seed: int | None = None):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed) if seed is None else seed)
            return instantiate(self.cfg.model, input_shape=self._shape,
                               num_classes=self._classes)

    # -- the levels --------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Every level not yet finished, in order; returns all levels' results."""
        self.check()
        self._write_meta()
        rows = []
        for level in range(self.settings["levels"] + 1):
            rows = self.ensure(level)
        return rows

    def _write_meta(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "lottery.json"
        if not meta.is_file():
            overrides = []
            try:
                overrides = list(HydraConfig.get().overrides.task)
            except ValueError:
                pass
            from prunelab.results import write_json_atomic

            write_json_atomic(meta, {"config": self.config, "control": self.control,
                                     "seed": int(self.cfg.seed), "internal": self.internal,
                                     "overrides": overrides,
                                     "created": time.strftime("%Y-%m-%d %H:%M:%S")})

    def ensure(self, level: int) -> list[dict[str, Any]]:
        """Make sure ``level`` (and every level before it) is finished; returns the finished
        levels' results."""
        self.check()
        if not level_done(self.dir, level):
            self._write_meta()
            if level > 0 and not level_done(self.dir, level - 1):
                self.ensure(level - 1)
            self._run_level(level)
            rows = read_levels(self.dir)
            self._write_summary(rows)
            return rows
        return read_levels(self.dir)

    def _ticket_level(self, level: int) -> None:
        """The ticket's ``level`` must be finished (trained here if the ticket is our own)."""
        assert self.ticket is not None
        if level_done(self.ticket.dir, level):
            return
        if self._ticket_external:
            raise ConfigError(f"lottery.masks_from={str(self.ticket.dir)!r}: level {level} is not "
                              f"finished; run the ticket (lottery.control=none) first")
        self.log(f"[ticket] level {level}: training the winning ticket for the masks")
        self.ticket.ensure(level)

    def mask(self, level: int) -> dict[str, Any]:
        """The mask of ``level``: all ones at level 0; by magnitude of level ``level-1``'s end
        weights (tickets), or derived from the ticket's (controls)."""
        import torch

        if (level_dir(self.dir, level) / "mask.pt").is_file() and level_done(self.dir, level):
            return load(level_dir(self.dir, level) / "mask.pt")
        if level == 0:
            net = self._new_net()
            named = dict(net.named_parameters())
            return {n: torch.ones_like(named[n], dtype=torch.bool) for n in self._names}
        if self.control == "none":
            prev = level_dir(self.dir, level - 1)
            end, old = load(prev / "end.pt"), load(prev / "mask.pt")
            return imp_masks({n: end[n] for n in self._names}, old, level,
                             self.settings["prune_fraction"], self._own, self.scope)
        self._ticket_level(level - 1)
        ticket_mask = self.ticket.mask(level)
        if self.control == "random_reinit":
            return ticket_mask
        old = self.mask(level - 1)
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + level)
        return random_masks(ticket_mask, old, gen)

    def initial_state(self) -> dict[str, Any]:
        """θ0, saved once in ``init.pt``."""
        path = self.dir / "init.pt"
        if path.is_file():
            return load(path)
        state = {k: v.detach().clone() for k, v in self._new_net().state_dict().items()}
        save_atomic(state, path)
        return state

    def rewind_state(self) -> dict[str, Any]:
        path = self.dir / "rewind.pt"
        if self.control != "none":
            self._ticket_level(0)
            return load(self.ticket.dir / "rewind.pt")
        if not path.is_file():
            raise RuntimeError(f"{path} is missing although level 0 is finished")
        return load(path)

    def start_state(self, level: int, mask: Mapping[str, Any]) -> dict[str, Any]:
        """The weights a level starts from: θ0 at level 0; the rewind weights (controls:
        random_reinit, a fresh initialization) times the mask afterwards."""
        if level == 0:
            return self.initial_state()
        if self.control == "random_reinit":
            seed = int(self.cfg.seed) * 1_000_003 + 7919 * level
            base = {k: v.detach().clone() for k, v in self._new_net(seed).state_dict().items()}
        else:
            base = self.rewind_state()
        return {k: (v * mask[k].to(v.dtype) if k in mask else v.clone()) for k, v in base.items()}

    def _run_level(self, level: int) -> None:
        d = level_dir(self.dir, level)
        d.mkdir(parents=True, exist_ok=True)
        if level == 0 and self.control != "none":
            # level 0 is the dense network: the same for every control, so it is the ticket's
            self._ticket_level(0)
            res = json.loads((level_dir(self.ticket.dir, 0) / "results.json").read_text())
            res.update(control=self.control, source=str(level_dir(self.ticket.dir, 0)))
            from prunelab.results import write_json_atomic

            write_json_atomic(d / "results.json", res)
            return
        mask = self.mask(level)
        start = self.start_state(level, mask)
        save_atomic(mask, d / "mask.pt")
        save_atomic(start, d / "start.pt")
        self.log(f"[{self.control}] level {level}: {100 * density(mask):.2f}% of weights remain")
        res = self._train(level, d, mask, start)
        from prunelab.results import write_json_atomic

        write_json_atomic(d / "results.json", res)
        self._print_level(res)

    def _train(self, level: int, d: Path, mask: Mapping[str, Any], start: Mapping[str, Any]
               ) -> dict[str, Any]:
        import pytorch_lightning as pl
        import torch
        from pytorch_lightning.callbacks import ModelCheckpoint

        from prunelab.module import ClassifierModule
        from prunelab.pruning import OneShot, Pruner, PruningCallback

        t0 = time.perf_counter()
        cfg = self.cfg
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        if cfg.hardware.get("threads"):
            torch.set_num_threads(int(cfg.hardware.threads))
        net = self._new_net()
        net.load_state_dict(start)
        pruner = Pruner(name="none", score=None, include=cfg.lottery.include,
                        exclude=cfg.lottery.exclude)
        rewind_step = self.rewind_step(self._steps_per_epoch) if level == 0 else None
        keeper = PruningCallback(pruner, OneShot(), 0.0, rewind_step=rewind_step,
                                 log_per_layer=False)
        keeper.bind(net)
        keeper.masks.update(mask, allow_regrow=True)
        keeper.masks.apply_()
        lr_sched = instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None
        module = ClassifierModule(net, num_classes=int(self._dm.num_classes),
                                  optimizer=instantiate(cfg.optimizer), lr_scheduler=lr_sched,
                                  scheduler_interval=cfg.module.scheduler_interval,
                                  gradient_clip_val=cfg.module.gradient_clip_val,
                                  config={"level": level, "control": self.control})
        ckpt = ModelCheckpoint(dirpath=str(d / "checkpoints"), filename="best-step={step}",
                               monitor="val/acc", mode="max", save_last=True, save_top_k=1,
                               auto_insert_metric_name=False)
        logger = instantiate(cfg.logger, save_dir=str(d)) if cfg.get("logger") else False
        trainer = instantiate(cfg.trainer, callbacks=[keeper, ckpt, *self.callbacks],
                              logger=logger, default_root_dir=str(d))
        last = d / "checkpoints" / "last.ckpt"
        resume = str(last) if last.is_file() else None
        if resume:
            self.log(f"[{self.control}] level {level}: resuming from {last}")
        trainer.fit(module, datamodule=self._dm, ckpt_path=resume)
        end = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        save_atomic(end, d / "end.pt")
        if level == 0 and self.control == "none":
            if keeper.rewind_state is None:
                raise RuntimeError(f"the rewind weights at iteration {rewind_step} were never "
                                   f"captured")
            save_atomic(keeper.rewind_state, self.dir / "rewind.pt")
        last_metrics = trainer.test(module, datamodule=self._dm, verbose=False)[0]
        best_path = ckpt.best_model_path or None
        best_metrics = (trainer.test(module, datamodule=self._dm, ckpt_path=best_path,
                                     verbose=False)[0] if best_path else last_metrics)
        best_step = _step_of(best_path)
        weights = {n: end[n] for n in self._names}
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        total = sum(w.numel() for w in weights.values())
        start_zeros = sum(int((start[n] == 0).sum()) for n in self._names)
        return {
            "kind": "lottery_level",
            "level": level,
            "control": self.control,
            "seed": int(cfg.seed),
            "model": _option_name("model", cfg.model),
            "data": _option_name("data", cfg.data),
            "density": density(mask),
            "percent_remaining": 100.0 * density(mask),
            "per_layer_density": {n: float(mask[n].float().mean()) for n in self._names},
            "sparsity_end_weights": zeros / total,
            "sparsity_start_weights": start_zeros / total,
            "test_acc": float(best_metrics["test/acc"]),
            "test_loss": float(best_metrics["test/loss"]),
            "test_acc_last": float(last_metrics["test/acc"]),
            "best_val_acc": (None if ckpt.best_model_score is None
                             else float(ckpt.best_model_score)),
            "best_val_iteration": best_step,
            "iterations": int(trainer.global_step),
            "epochs": int(self.settings["epochs"]),
            "rewind_step": self.rewind_step(self._steps_per_epoch),
            "wall_time_s": time.perf_counter() - t0,
            "group_hash": _group_hash(self.config),
        }

    # -- reporting ---------------------------------------------------------------------------
    def _print_level(self, res: Mapping[str, Any]) -> None:
        best = "n/a" if res["best_val_acc"] is None else \
            f"{100 * res['best_val_acc']:.2f}% @ it {res['best_val_iteration']}"
        self.log(f"[{res['control']}] level {res['level']}: {res['percent_remaining']:.2f}% "
                 f"remain, test acc {100 * res['test_acc']:.2f}% (last {100 * res['test_acc_last']:.2f}"
                 f"%), best val {best}, {res['wall_time_s']:.1f} s")

    def _write_summary(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if self.internal:
            return
        from prunelab.report import lottery_curves, plot_lottery, write_table

        runs = [rows]
        if self.ticket is not None:
            runs.append(read_levels(self.ticket.dir))
        curves = lottery_curves([r for run in runs for r in run])
        write_table(self.dir / "summary", curves)
        plot_lottery(curves, self.dir / "lottery.png",
                     title=f"{rows[0]['model']} / {rows[0]['data']}, seed {rows[0]['seed']}")


def _option_name(group: str, node: DictConfig) -> str:
    """The config option a node came from: Hydra's choice, else the option whose file has the
    same ``_target_`` (runs built outside Hydra), else the class name."""
    target = str(node.get("_target_", ""))
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        if f"_target_: {target}\n" in path.read_text():
            return _choice(group, path.stem)
    return _choice(group, _target_name(node))


def _group_hash(config: Mapping[str, Any]) -> str:
    """Hash of the config without seed and control: runs that a report averages together."""
    import hashlib

    drop = ("seed", "data.seed", "lottery.control")
    blob = json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _step_of(path: str | None) -> int | None:
    if not path:
        return None
    stem = Path(path).stem  # best-step=1234
    try:
        return int(stem.split("=", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


class _unlocked:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        from omegaconf import open_dict

        self._ctx = open_dict(self.cfg)
        self._ctx.__enter__()
        OmegaConf.set_readonly(self.cfg, False)
        return self.cfg

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# -- command line ----------------------------------------------------------------------------------
def run(cfg: DictConfig, output_dir: str | Path | None = None,
        callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run (or continue) the lottery experiment of ``cfg`` in ``output_dir``."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if output_dir is None:
        output_dir = HydraConfig.get().runtime.output_dir
    lr = LotteryRun(cfg, output_dir, callbacks=callbacks)
    lr.check()
    done = [lvl for lvl in range(lr.settings["levels"] + 1) if level_done(lr.dir, lvl)]
    if done:
        nxt = next((lvl for lvl in range(lr.settings["levels"] + 1) if lvl not in done), None)
        print(f"prunelab: {lr.dir}: levels {', '.join(map(str, done))} finished; "
              + ("nothing left to do" if nxt is None else f"resuming at level {nxt}"))
    rows = lr.run()
    print(f"prunelab: lottery run finished: {lr.dir} (summary.md, lottery.png)")
    return rows


def _discard_if_empty(run_dir: Path) -> None:
    """Remove a run directory a rejected command created (it holds only Hydra's empty log)."""
    if not run_dir.is_dir() or (run_dir / "lottery.json").exists():
        return
    if all(f.is_file() and f.suffix == ".log" and f.stat().st_size == 0 for f in run_dir.iterdir()):
        for f in run_dir.iterdir():
            f.unlink()
        run_dir.rmdir()


@hydra.main(version_base="1.3", config_path="conf", config_name="lottery")
def _hydra_main(cfg: DictConfig) -> float:
    rows = run_task(run, cfg, on_config_error=_discard_if_empty)
    return float("nan") if rows is None else float(rows[-1]["test_acc"])


def check_lottery_overrides(argv: list[str]) -> None:
    """Group typos, and experiments that belong to ``prunelab.train``, as one-line errors."""
    check_overrides(argv, groups=LOTTERY_GROUPS)
    for arg in argv:
        if arg.startswith("experiment=") or arg.startswith("+experiment="):
            for v in arg.split("=", 1)[1].split(","):
                if not v.startswith("lth_"):
                    raise ConfigError(f"experiment={v} is a training experiment (python -m "
                                      f"prunelab.train experiment={v}); lottery experiments: "
                                      f"lth_conv2, lth_lenet300")


def main() -> None:
    cli_main(check_lottery_overrides, _hydra_main)


if __name__ == "__main__":
    main()
