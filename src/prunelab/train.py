"""Train and prune one model: ``python -m prunelab.train pruner=magnitude sparsity=0.7``.

Hydra composes ``conf/train.yaml`` with the data, model, pruner, schedule, optimizer, hardware,
trainer and logger groups; :func:`run` is pure orchestration and returns the results, so that
sweeps (Hydra multirun and its optimizing sweepers) can use it as their objective:

    check the top-level values        (assemble.check_top_level: before any heavy import)
    init_from's content in identity   (pretrained.init_identity: its sha256 in the config)
    data, model, method, schedule     (assemble.assemble: validated, nothing written yet;
                                       init_from loaded into the network)
    module, checkpoint, trainer       (assemble.build_module / build_trainer)
    fit (epochs=0: prune once,        (Lightning; posttrain.post_training)
         recalibrate BatchNorm)
    test, attack (optional)           (Lightning; prunelab.robust)
    measure and write results.json    (results.measure_model / run_results)
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from prunelab.cli import start
from prunelab.hardware import job_threads
from prunelab.jobs import finished_results, run_task


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train, prune, test and measure one model; write ``results.json``; return the results."""
    from prunelab.assemble import (assemble, build_module, build_trainer, check_top_level,
                                   resume_point)

    sparsity = check_top_level(cfg)  # a bad value is answered before heavy imports
    import pytorch_lightning as pl
    import torch

    from prunelab.files import write_json_atomic
    from prunelab.history import keep_csv_history
    from prunelab.posttrain import post_training
    from prunelab.pretrained import init_identity
    from prunelab.pruning import FinalSparsityCheckpoint
    from prunelab.results import measure_model, print_summary, run_results

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14
    start_time = time.perf_counter()
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir)
    cfg = init_identity(cfg)  # init_from's content (sha256) is part of the run's identity
    done = finished_results(cfg, out)
    if done is not None:
        return with_control(cfg, out, done)
    resume = resume_point(cfg, out)  # a killed run continues from its last checkpoint
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    threads = job_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    parts = assemble(cfg, sparsity)
    dm, net, callback = parts.datamodule, parts.net, parts.callback
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    module = build_module(cfg, net, int(dm.num_classes), optimizer=parts.optimizer,
                          regularizer=parts.regularizer,
                          distiller=parts.distiller, config=resolved,
                          batch_transform=parts.batch_transform)
    ckpt = FinalSparsityCheckpoint(dirpath=str(out / "checkpoints"), filename="best",
                                   monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode,
                                   save_last=cfg.checkpoint.save_last, save_top_k=1,
                                   auto_insert_metric_name=False,
                                   # a rerun of a killed job replaces its stale files (no -v1)
                                   enable_version_counter=False, started=start_time)
    trainer = build_trainer(cfg, out, [callback, ckpt])
    post = None
    if int(cfg.epochs) == 0:  # post-training pruning: no training (a resume starts it over)
        best_path, post = post_training(cfg, parts, module, trainer, ckpt)
    else:
        keep_csv_history(trainer, resume)  # Lightning's CSVLogger would start metrics.csv over
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        best_path = ckpt.best_model_path or None
    test_metrics = trainer.test(module, datamodule=dm, ckpt_path=best_path, verbose=False)[0]
    train_time = ckpt.elapsed()  # across resumes
    adversarial = None
    ev = cfg.get("eval") or {}
    if ev.get("adversarial"):
        from prunelab.robust import adversarial_accuracy

        dm.setup("test")
        adversarial = adversarial_accuracy(
            module.net, dm.test_dataloader(), dm, str(ev.adversarial), float(ev.epsilon),
            steps=int(ev.steps), alpha=ev.get("alpha"), max_batches=ev.get("batches"),
            seed=int(cfg.seed))
    if not trainer.is_global_zero:  # DDP: rank 0 measures and writes the results
        return {"rank": trainer.global_rank, "test_acc": float(test_metrics["test/acc"]),
                "best_val_acc": None, "results_path": None}
    m = cfg.measure
    measured = measure_model(net, callback.masks.names, dm.input_shape, out,
                             latency=bool(m.latency), batch_sizes=list(m.batch_sizes),
                             warmup=int(m.warmup), runs=int(m.runs),
                             threads=threads, size=bool(m.size))
    # a blow-up during training; a dynamic method that never moved a mask
    parts.warnings.extend(module.training_warnings + callback.warnings)
    results = run_results(cfg, resolved, parts, trainer, ckpt, test_metrics, measured,
                          adversarial=adversarial, train_time=train_time,
                          wall_time=ckpt.elapsed(), out=out, post_training=post)
    write_json_atomic(out / "results.json", results)
    (out / "error.json").unlink(missing_ok=True)  # a rerun sweep job that failed before
    print_summary(results)
    return with_control(cfg, out, results)


def with_control(cfg: DictConfig, out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``control=scratch``: the control run (``prunelab.control``) once, its summary added to
    this run's results.json."""
    from prunelab.control import control_kind, run_scratch
    from prunelab.files import write_json_atomic

    if control_kind(cfg) is None or results.get("rank") is not None:
        return results
    budget = cfg.get("control_budget", "epochs")
    if "control" in results:
        if results["control"].get("budget") != budget:
            from prunelab.errors import ConfigError

            raise ConfigError(f"control_budget={budget}: {out} already has its control=scratch "
                              f"with control_budget={results['control'].get('budget')} in "
                              f"{results['control'].get('dir')}/; use that budget or a new run")
        return results
    results = {**results, "control": run_scratch(cfg, out, results, run)}
    write_json_atomic(out / "results.json", results)
    c = results["control"]
    print(f"prunelab: control=scratch ({c['architecture']}, {c['epochs']} epochs, fresh init): "
          f"test acc {c['test_acc']:.4f} vs pruned {results['test_acc']:.4f} "
          f"({out / c['dir']})")
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    results = run_task(run, cfg, lock=True)
    if results is None:
        return float("nan")
    value = results.get(str(cfg.objective))
    return float(value if value is not None else results["test_acc"])


def main() -> None:
    start(_hydra_main, "train")


if __name__ == "__main__":
    main()
