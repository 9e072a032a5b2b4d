"""One lottery run (one control, one seed) in one directory: :class:`LotteryRun`.

Level 0 trains the dense network from θ0 and keeps the rewind weights θk. Every later level
takes its mask (:mod:`prunelab.tickets.masks`), starts from the rewind weights times the mask
(controls: see :class:`LotteryRun`) and trains (:func:`prunelab.tickets.level.train_level`).
Levels are idempotent directories (:mod:`prunelab.tickets.store`): a finished level is never
touched again, an unfinished one resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

from prunelab.errors import ConfigError, UserError
from prunelab.seeds import event_seed
from prunelab.tickets import store
from prunelab.tickets.masks import density, full_masks, imp_method
from prunelab.tickets.settings import (
    CONTROL_KEYS,
    config_diff,
    group_hash,
    result_config,
    validate,
)

#: Attributes a control shares with its ticket run (the same data and model facts).
_SHARED = ("imp", "_dm", "_names", "_own", "_steps_per_epoch", "_shape", "_classes",
           "model_name", "data_name")


class LotteryRun:
    """One lottery run in ``run_dir``.

    Controls (``lottery.control``): ``random_reinit`` trains the ticket's masks from a fresh
    random initialization; ``random_mask`` trains masks with the ticket's per-layer sparsity at
    random positions (nested across levels) from θk. A control takes its masks from a ticket
    run: ``lottery.masks_from=<finished ticket run>``, or else it trains the ticket itself in
    ``<run>/ticket/``.

    ``callbacks``: extra Lightning callbacks given to every level's Trainer (tests use them to
    look at the weights and the optimizer at the start of a level). ``overrides``: the command
    line, recorded in ``lottery.json``."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, *, internal: bool = False,
                 callbacks: Sequence[Any] = (), log: Callable[[str], None] = print,
                 overrides: Sequence[str] = ()):
        self.cfg = cfg
        self.settings = validate(cfg)
        self.control = str(cfg.lottery.control)
        self.dir = Path(run_dir)
        self.internal = internal
        self.callbacks = list(callbacks)
        self.log = log
        self.overrides = list(overrides)
        self.config = result_config(cfg)
        self.imp = None  # the pruning method (IMP), built by check()
        self._dm = None
        self.ticket: LotteryRun | None = None  # controls: where the masks come from
        self._ticket_external = False
        self._checked = False

    # -- set-up ------------------------------------------------------------------------------
    def check(self) -> None:
        """Validate everything before anything is written (UserError). Idempotent."""
        if self._checked:
            return
        if store.is_run(self.dir):
            diff = config_diff(store.read_meta(self.dir)["config"], self.config)
            if diff:
                raise ConfigError(f"{self.dir} holds a lottery run with a different config: "
                                  f"{'; '.join(diff)}; rerun with its settings or use a new "
                                  f"directory")
        self._setup()
        if self.control != "none":
            cfg = copy.deepcopy(self.cfg)
            with open_dict(cfg), read_write(cfg):
                cfg.lottery.control = "none"
                cfg.lottery.masks_from = None
            masks_from = self.cfg.lottery.masks_from
            self._ticket_external = bool(masks_from)
            src = (self._find_ticket(Path(str(masks_from))) if masks_from
                   else self.dir / store.OWN_TICKET)
            self.ticket = LotteryRun(cfg, src, internal=not masks_from, log=self.log,
                                     overrides=self.overrides)
            for key in _SHARED:
                setattr(self.ticket, key, getattr(self, key))
            self.ticket.check()
        self._checked = True

    def _find_ticket(self, src: Path) -> Path:
        """The ticket run (``lottery.control=none``, same config otherwise) at ``src`` or, if
        ``src`` is not a run itself, the one among the runs below it."""
        name = f"lottery.masks_from={str(src)!r}"
        if store.is_run(src):
            other = store.read_meta(src)["config"]
            diff = config_diff(other, self.config, ignore=CONTROL_KEYS)
            if other.get("lottery.control") != "none" or diff:
                raise ConfigError(f"{name} is not the ticket run of this config: "
                                  f"{'; '.join(diff) or 'its lottery.control is not none'}")
            return src
        if not src.is_dir():
            raise ConfigError(f"{name} does not exist; allowed: a ticket run directory "
                              f"(lottery.control=none) or a directory holding one")
        for run_dir in store.runs_below(src):
            other = store.read_meta(run_dir)["config"]
            if (other.get("lottery.control") == "none"
                    and not config_diff(other, self.config, ignore=CONTROL_KEYS)):
                return run_dir
        raise ConfigError(f"{name} holds no ticket run (lottery.control=none) with this config; "
                          f"run it first with the same settings and lottery.control=none")

    def _setup(self) -> None:
        """Instantiate the data and a model once, check the rewind step against level 0."""
        if self._dm is not None:
            return
        from hydra.utils import instantiate

        from prunelab.assemble import data_and_model
        from prunelab.config import as_user_error, choice, target_name
        from prunelab.hardware import memory_format

        self.imp = imp_method(self.cfg)
        memory_format(self.cfg.hardware)  # a bad value is one line before data is read
        dm, net, model_name = data_and_model(self.cfg)
        self._shape, self._classes = tuple(dm.input_shape), int(dm.num_classes)
        # results.json names: Hydra's choice; outside Hydra the registry's names
        self.model_name = model_name
        self.data_name = choice("data", getattr(dm, "name", None) or target_name(self.cfg.data))
        try:
            names = list(self.imp.resolve(net))  # also checks the layer_fractions globs
            own = self.imp.own_fractions(net)
            instantiate(self.cfg.optimizer)(params=list(net.parameters()))  # a bad lr fails here
            dm.setup("fit")
            batches = getattr(dm, "train_batches", dm.train_dataloader)()  # not grouped
            steps = len(batches) * self.settings["epochs"]
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - user-input errors become one line
            raise as_user_error(exc) from exc
        per_epoch = steps // self.settings["epochs"]
        rewind = self.rewind_step(per_epoch)
        if rewind >= steps:
            raise ConfigError(f"lottery.rewind_step={rewind} is beyond level 0's length: allowed "
                              f"0..{steps - 1} ({self.settings['epochs']} epochs of "
                              f"{per_epoch} iterations)")
        self._dm, self._names, self._own = dm, names, own
        self._steps_per_epoch = per_epoch

    def rewind_step(self, steps_per_epoch: int) -> int:
        if self.settings["rewind_epoch"] is not None:
            return self.settings["rewind_epoch"] * steps_per_epoch
        return self.settings["rewind_step"]

    def _new_net(self, seed: int | None = None):
        import torch

        from prunelab.hardware import to_memory_format
        from prunelab.models import build_from_config

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed) if seed is None else seed)
            net = build_from_config(self.cfg.model, self._shape, self._classes)
        to_memory_format(net, self.cfg.hardware)  # the layout the masks are then created in
        return net

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
        store.write_meta(self.dir, self.config, self.control, int(self.cfg.seed), self.internal,
                         self.overrides)

    def ensure(self, level: int) -> list[dict[str, Any]]:
        """Make sure ``level`` (and every level before it) is finished; returns the finished
        levels' results."""
        self.check()
        if not store.level_done(self.dir, level):
            self._write_meta()
            if level > 0 and not store.level_done(self.dir, level - 1):
                self.ensure(level - 1)
            self._run_level(level)
            rows = store.read_levels(self.dir)
            self._write_summary(rows)
            return rows
        return store.read_levels(self.dir)

    def _ticket_level(self, level: int) -> None:
        """The ticket's ``level`` must be finished (trained here if the ticket is our own)."""
        assert self.ticket is not None
        if store.level_done(self.ticket.dir, level):
            return
        if self._ticket_external:
            raise ConfigError(f"lottery.masks_from={str(self.ticket.dir)!r}: level {level} is not "
                              f"finished; run the ticket (lottery.control=none) first")
        self.log(f"[ticket] level {level}: training the winning ticket for the masks")
        self.ticket.ensure(level)

    def mask(self, level: int) -> dict[str, Any]:
        """The mask of ``level``: all ones at level 0; by magnitude of level ``level-1``'s end
        weights (tickets), or derived from the ticket's (controls)."""
        path = store.level_dir(self.dir, level) / store.MASK
        if path.is_file() and store.level_done(self.dir, level):
            return store.load(path)
        if level == 0:
            named = dict(self._new_net().named_parameters())
            return full_masks({n: named[n] for n in self._names})
        if self.control == "none":
            prev = store.level_dir(self.dir, level - 1)
            end, old = store.load(prev / store.END), store.load(prev / store.MASK)
            return self.imp.level_masks({n: end[n] for n in self._names}, old, level, self._own)
        self._ticket_level(level - 1)
        ticket_mask = self.ticket.mask(level)
        if self.control == "random_reinit":
            return ticket_mask
        return self.imp.control_masks(ticket_mask, self.mask(level - 1), level)

    def initial_state(self) -> dict[str, Any]:
        """θ0, saved once in ``init.pt``."""
        path = self.dir / store.INIT
        if path.is_file():
            return store.load(path)
        state = {k: v.detach().clone() for k, v in self._new_net().state_dict().items()}
        store.save(state, path)
        return state

    def rewind_state(self) -> dict[str, Any]:
        if self.control != "none":
            self._ticket_level(0)
            return store.load(self.ticket.dir / store.REWIND)
        path = self.dir / store.REWIND
        if not path.is_file():
            raise RuntimeError(f"{path} is missing although level 0 is finished")
        return store.load(path)

    def start_state(self, level: int, mask: Mapping[str, Any]) -> dict[str, Any]:
        """The weights a level starts from: θ0 at level 0; the rewind weights (controls:
        random_reinit, a fresh initialization) times the mask afterwards."""
        if level == 0:
            return self.initial_state()
        if self.control == "random_reinit":
            seed = event_seed(int(self.cfg.seed), 7919 * level)
            base = {k: v.detach().clone() for k, v in self._new_net(seed).state_dict().items()}
        else:
            base = self.rewind_state()
        return {k: (v * mask[k].to(v.dtype) if k in mask else v.clone()) for k, v in base.items()}

    def _run_level(self, level: int) -> None:
        from prunelab.tickets.level import Level, train_level

        d = store.level_dir(self.dir, level)
        d.mkdir(parents=True, exist_ok=True)
        if level == 0 and self.control != "none":
            # level 0 is the dense network: the same for every control, so it is the ticket's
            self._ticket_level(0)
            res = store.read_result(self.ticket.dir, 0)
            res.update(control=self.control, source=str(store.level_dir(self.ticket.dir, 0)))
            store.write_result(self.dir, 0, res)
            return
        mask = self.mask(level)
        start = self.start_state(level, mask)
        store.save(mask, d / store.MASK)
        store.save(start, d / store.START)
        self.log(f"[{self.control}] level {level}: {100 * density(mask):.2f}% of weights remain")
        rewind_step = self.rewind_step(self._steps_per_epoch)
        ticket_level0 = level == 0 and self.control == "none"
        metrics, rewind = train_level(
            self.cfg, Level(level, d, mask, start, rewind_step if ticket_level0 else None),
            self._new_net(), self._dm, self.imp, names=self._names, control=self.control,
            callbacks=self.callbacks, log=self.log)
        if rewind is not None:
            store.save(rewind, self.dir / store.REWIND)
        wall = metrics.pop("wall_time_s")
        res = {"kind": "lottery_level", "level": level, "control": self.control,
               "seed": int(self.cfg.seed), "model": self.model_name, "data": self.data_name,
               **metrics, "epochs": int(self.settings["epochs"]), "rewind_step": rewind_step,
               "wall_time_s": wall, "group_hash": group_hash(self.config)}
        store.write_result(self.dir, level, res)
        self._print_level(res)

    # -- reporting ---------------------------------------------------------------------------
    def _print_level(self, res: Mapping[str, Any]) -> None:
        best = ("n/a" if res["best_val_acc"] is None
                else f"{100 * res['best_val_acc']:.2f}% @ it {res['best_val_iteration']}")
        self.log(f"[{res['control']}] level {res['level']}: {res['percent_remaining']:.2f}% "
                 f"remain, test acc {100 * res['test_acc']:.2f}% (last "
                 f"{100 * res['test_acc_last']:.2f}%), best val {best}, "
                 f"{res['wall_time_s']:.1f} s")

    def _write_summary(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if self.internal:
            return
        from prunelab.plots import plot_lottery
        from prunelab.tickets.summary import lottery_curves, write_table

        runs = [rows]
        if self.ticket is not None:
            runs.append(store.read_levels(self.ticket.dir))
        curves = lottery_curves([r for run in runs for r in run])
        write_table(self.dir / store.SUMMARY, curves)
        plot_lottery(curves, self.dir / store.PLOT,
                     title=f"{rows[0]['model']} / {rows[0]['data']}, seed {rows[0]['seed']}")
