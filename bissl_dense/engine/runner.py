"""Config loading with checked overrides, and the pretext entry points (pretrain, fit-head).

Every stage runs on mmengine's ``Runner``; this module adds what the CLI needs around it:
``--cfg-options`` keys are checked against the config (a typo fails with suggestions instead of
silently adding an unused key), the data is opened before training starts (a missing data path
fails at once, naming the path), and ``fit-head`` is the same run with a frozen backbone.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.runner import Runner

# Imported for their registrations (loops, hooks, datasets, LARS; SimCLR, BYOL).
from bissl_dense.engine import checkpoint, datasets, hooks, loops, optim  # noqa: F401
from bissl_dense.errors import ConfigError, DataError
from bissl_dense.pretext import methods  # noqa: F401

# Top-level keys mmengine's Runner.from_cfg (and its config machinery) read besides the ones a
# config file defines; overriding them is legitimate even when the file does not set them.
RUNNER_KEYS = frozenset(
    {
        "auto_scale_lr",
        "cfg",
        "compile",
        "custom_hooks",
        "custom_imports",
        "data_preprocessor",
        "default_hooks",
        "default_scope",
        "env_cfg",
        "experiment_name",
        "launcher",
        "load_from",
        "log_level",
        "log_processor",
        "model_wrapper_cfg",
        "randomness",
        "resume",
        "sync_bn",
        "visualizer",
        "work_dir",
    }
)


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=3)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}?"
    return f"known keys here: {', '.join(sorted(choices)) or '(none)'}"


def check_cfg_options(cfg: Config, options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an override whose key path does not exist in ``cfg``.

    ``a.b.c=v`` needs ``a`` and ``a.b`` to exist and ``c`` to be a key of ``a.b`` (list elements
    are addressed by index, ``param_scheduler.0.end``). Top-level runner keys are always allowed.
    """
    for full_key in options:
        parts = full_key.split(".")
        if len(parts) == 1 and parts[0] in RUNNER_KEYS:
            continue
        node: Any = cfg._cfg_dict
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the config's top level"
            if isinstance(node, Mapping):
                if part not in node:
                    raise ConfigError(
                        f"unknown config key '{full_key}' in --cfg-options: '{part}' is not a "
                        f"key of {where}; {_suggest(part, [str(k) for k in node])}"
                    )
                node = node[part]
            elif isinstance(node, (list, tuple)):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"unknown config key '{full_key}' in --cfg-options: {where} is a list of "
                        f"{len(node)} items, '{part}' is not an index into it"
                    )
                node = node[int(part)]
            else:
                raise ConfigError(
                    f"unknown config key '{full_key}' in --cfg-options: {where} is a "
                    f"{type(node).__name__} value, not a dict"
                )


def load_config(
    config: str | Path,
    cfg_options: Mapping[str, Any] | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    launcher: str = "none",
) -> Config:
    """Read ``config``, apply checked overrides, and set work dir, resume and launcher."""
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        cfg = Config.fromfile(str(path))
    except (SyntaxError, ImportError, KeyError, ValueError, TypeError, NameError) as error:
        raise ConfigError(f"cannot read config file '{path}': {error}") from error
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(dict(cfg_options))
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / path.stem)
    cfg.resume = bool(resume)
    cfg.launcher = launcher
    return cfg


def prepare_cpu_distributed(cfg: Config) -> None:
    """Let ``--launcher pytorch`` run on CPU-only machines (gloo), e.g. to test DDP code paths.

    mmengine 0.10.7's launcher always calls ``torch.cuda.set_device`` and its DDP wrapper passes
    ``device_ids``; both fail without a GPU. Here the process group is initialised with gloo
    from torchrun's environment (mmengine then skips its own initialisation) and the wrapper is
    told ``device_ids=None``, which is how DDP wraps CPU modules.
    """
    if cfg.get("launcher", "none") != "pytorch" or torch.cuda.is_available():
        return
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="gloo")
    if cfg.get("sync_bn"):
        # SyncBatchNorm has no CPU implementation: CPU processes normalise per process.
        print("[bissl] no GPU: sync_bn is ignored on CPU processes (gloo)")
        cfg.sync_bn = None
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    if "DistributedDataParallel" in str(wrapper["type"]):  # DDP-based wrappers only
        wrapper.setdefault("broadcast_buffers", False)
        wrapper.setdefault("device_ids", None)
    cfg.model_wrapper_cfg = wrapper


_runners_built = itertools.count()


def isolate_experiment(cfg: Config) -> None:
    """Give the runner about to be built from ``cfg`` an experiment name no earlier runner of this
    process had.

    mmengine keys its process-global logger, message hub, visualizer and default scope by the
    experiment name, ``<config file stem>_<timestamp to the second>``. A second runner built in
    the same second from a config of the same file name (the stages and seeds ``bissl compare``
    and the demo run in one process, tests) got the first runner's instances: it logged and wrote
    its visualizer data into the first runner's folder and shared its message hub. The first
    runner of a process keeps mmengine's usual name; later ones get ``-<n>`` appended.
    """
    n = next(_runners_built)
    if n == 0:
        return
    base = cfg.get("experiment_name") or (Path(cfg.filename).stem if cfg.filename else "run")
    cfg.experiment_name = f"{base}-{n}"


def build_runner(cfg: Config) -> Runner:
    """A runner whose training data is already opened (bad data paths fail here, not later)."""
    prepare_cpu_distributed(cfg)
    isolate_experiment(cfg)
    runner = Runner.from_cfg(cfg)
    _ = runner.train_loop  # builds the dataloader and the loop from their configs
    return runner


def pretrain(
    config: str | Path,
    work_dir: str | Path | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    resume: bool = False,
    launcher: str = "none",
) -> Runner:
    """Run (or resume) pretext pretraining; returns the finished runner."""
    runner = build_runner(load_config(config, cfg_options, work_dir, resume, launcher))
    runner.train()
    return runner


def fit_head_options(
    backbone: str | Path, cfg_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Overrides that turn a pretext config into head fitting on a frozen backbone (App. C.6)."""
    path = Path(backbone)
    if not path.is_file():
        raise ConfigError(f"backbone file '{path}' does not exist")
    options = dict(cfg_options or {})
    options["model.freeze_backbone"] = True
    options["model.backbone_checkpoint"] = str(path.resolve())
    return options


def fit_head(
    backbone: str | Path,
    config: str | Path,
    work_dir: str | Path | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    resume: bool = False,
    launcher: str = "none",
) -> Runner:
    """Fit the projector (+ predictor) on a frozen off-the-shelf backbone, then export."""
    options = fit_head_options(backbone, cfg_options)
    return pretrain(config, work_dir, options, resume, launcher)


def evaluate_checkpoint(
    config: str | Path,
    checkpoint_file: str | Path,
    work_dir: str | Path | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    launcher: str = "none",
) -> dict[str, float]:
    """Run the config's test loop on ``checkpoint``; write and return the metrics.

    The checkpoint is read by mmengine with ``torch.load``'s weights-only unpickler (the
    default since torch 2.6): a file that needs arbitrary unpickling is refused.
    """
    import json

    from bissl_dense.fileio import atomic_write_text

    path = Path(checkpoint_file)
    if not path.is_file():
        raise DataError(f"checkpoint file '{path}' does not exist")
    cfg = load_config(config, cfg_options, work_dir, False, launcher)
    for key in ("test_dataloader", "test_cfg", "test_evaluator"):
        if cfg.get(key) is None:
            raise ConfigError(f"config '{config}' has no {key}; it cannot be tested")
    cfg.load_from = str(path)
    prepare_cpu_distributed(cfg)
    isolate_experiment(cfg)
    runner = Runner.from_cfg(cfg)
    metrics = {k: float(v) for k, v in runner.test().items()}
    target = Path(out) if out is not None else Path(cfg.work_dir) / "test_results.json"
    if runner.rank == 0:
        record = {"config": str(config), "checkpoint": str(path), "metrics": metrics}
        atomic_write_text(target, json.dumps(record, indent=2) + "\n")
        print(json.dumps(metrics, indent=2))
    return metrics
