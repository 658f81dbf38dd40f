"""mmengine integration: registered datasets, samplers, loops, hooks, LARS, and entry points.

Importing this package registers everything the configs under ``configs/`` refer to by name
in mmengine's root registries (``default_scope = "mmengine"``).
"""

from __future__ import annotations

from bissl_dense.engine.bissl_loop import (
    BiSSLLoop,
    BiSSLModel,
    BiSSLOptimWrapperConstructor,
    BiSSLReplicas,
    ExportBiSSLHook,
)
from bissl_dense.engine.checkpoint import (
    AtomicCheckpointHook,
    decode_state,
    encode_state,
    load_run_checkpoint,
)
from bissl_dense.engine.datasets import PretextImageFolder, SeededSampler, find_images
from bissl_dense.engine.hooks import ExportPretextHook, PretextStepHook, unwrap_model
from bissl_dense.engine.loops import ResumableTrainLoop
from bissl_dense.engine.optim import LARS
from bissl_dense.engine.runner import (
    ConfigError,
    build_runner,
    check_cfg_options,
    fit_head,
    load_config,
    pretrain,
)
from bissl_dense.engine.selection import BestCheckpointHook, read_results

__all__ = [
    "BestCheckpointHook",
    "read_results",
    "BiSSLLoop",
    "BiSSLModel",
    "BiSSLOptimWrapperConstructor",
    "BiSSLReplicas",
    "ExportBiSSLHook",
    "AtomicCheckpointHook",
    "ConfigError",
    "ExportPretextHook",
    "LARS",
    "PretextImageFolder",
    "PretextStepHook",
    "ResumableTrainLoop",
    "SeededSampler",
    "build_runner",
    "check_cfg_options",
    "decode_state",
    "encode_state",
    "find_images",
    "fit_head",
    "load_config",
    "load_run_checkpoint",
    "pretrain",
    "unwrap_model",
]
