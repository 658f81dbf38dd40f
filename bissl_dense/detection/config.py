"""detectron2 config keys of BiSSL and the checks every detection run makes at start (SPEC §4–§5).

``add_bissl_config(cfg)`` adds, with the paper's defaults:

* ``BISSL.STAGE``: ``"finetune"`` (plain detectron2 training), ``"warmup"`` (the downstream head
  only, on the frozen backbone and res5: SPEC §1 step 2) or ``"bissl"`` (the bilevel stage);
* one key per field of the core's :class:`~bissl_dense.core.BiSSLConfig`, *generated* from its
  dataclass fields (names and defaults), so that every core option can be set here and a new one
  appears without a change to this driver: the key is the upper-cased field name (``SOLVER``,
  ``WARM_START``, ``RESIDUAL_EVERY``, ``TRAIN_PRETEXT_HEAD``, ``CG_ITERS``, ``CG``, ``HVP``,
  ``ALTERNATIONS``, ``LOWER_STEPS``, ``UPPER_STEPS``, ``DAMPING``, ``AUTOCAST`` ...) except for
  the three in :data:`KEY_RENAMES` (``LAMBDA`` λ, ``GRAD_CLIP``, ``DISCARD_IJ``), and ``None`` is
  written as in :data:`NONE_VALUES` (``AUTOCAST ""``: float32; ``GRAD_CLIP 0``: no clipping).
  :func:`bissl_config_of` reads them back through the same table (:func:`bissl_keys`);
* the lower level: ``BISSL.LOWER_LR``/``LOWER_WEIGHT_DECAY`` (LARS), ``BISSL.LOWER_IMS_PER_BATCH``
  (total over processes) and ``BISSL.PRETEXT.*`` (method, weights, data, augmentation).
  The upper level uses ``SOLVER.BASE_LR``, ``SOLVER.WEIGHT_DECAY``, ``SOLVER.MOMENTUM`` and
  ``SOLVER.IMS_PER_BATCH``, as detectron2 users expect;
* ``DATASETS.VOC_ROOT``: where ``VOC2007/`` and ``VOC2012/`` are (re-registers detectron2's
  ``voc_*`` data sets there; empty: detectron2's ``$DETECTRON2_DATASETS``);
* ``DATASETS.VAL_FRACTION``, ``DATASETS.VAL_SEED``, ``DATASETS.VAL_SPLIT_FILE``: a validation
  split held out of VOC07+12 trainval (:mod:`bissl_dense.detection.data`), registered as
  ``voc_0712_val`` with the rest as ``voc_0712_trainval_minus_val``;
* ``MODEL.WEIGHTS`` must be set: a converted backbone, a detector checkpoint or ``"random"``;
* ``MODEL.ROI_HEADS.FREEZE_RES5`` (the warm-up freezes res5 with the backbone).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from bissl_dense.core import BiSSLConfig
from bissl_dense.core import bilevel as _core
from bissl_dense.errors import ConfigError

__all__ = [
    "KEY_RENAMES",
    "NONE_VALUES",
    "add_bissl_config",
    "bissl_config_of",
    "bissl_keys",
    "check_config",
    "load_config",
]

STAGES = ("finetune", "warmup", "bissl")

KEY_RENAMES: dict[str, str] = {
    "lam": "LAMBDA",
    "grad_clip_norm": "GRAD_CLIP",
    "discard_implicit_jacobian": "DISCARD_IJ",
}
"""``BiSSLConfig`` fields whose ``BISSL.*`` key is not the upper-cased field name: the keys this
driver documented before its node was generated (renaming them would break users' configs)."""

NONE_VALUES: dict[str, Any] = {"autocast": "", "grad_clip_norm": 0.0}
"""The node value that stands for a field's ``None``. A yacs key keeps the type of its default,
and ``AUTOCAST: ""`` (float32) / ``GRAD_CLIP: 0.0`` (no clipping) are what this driver always
documented. A future field whose default is ``None`` and that is not listed here gets the node
value ``None`` (yacs then accepts any plain value for it) and is passed on unchanged."""

# BISSL.* keys of this driver that are not BiSSLConfig fields (the stage, the lower optimiser,
# the pretext model and data, the results file): a generated key must never shadow one.
_DRIVER_KEYS = frozenset(
    {"STAGE", "SEED", "LOWER_LR", "LOWER_WEIGHT_DECAY", "LOWER_IMS_PER_BATCH", "PRETEXT"}
    | {"RESULTS_FILE"}
)


def _config_class() -> type[BiSSLConfig]:
    # looked up in the core at call time: the node follows whatever BiSSLConfig the core defines
    # (the tests replace it by a subclass with a new field)
    return _core.BiSSLConfig


def bissl_keys(config_class: type | None = None) -> dict[str, str]:
    """``{BiSSLConfig field: BISSL.* key}``, the one table both directions go through."""
    cls = config_class or _config_class()
    keys = {f.name: KEY_RENAMES.get(f.name, f.name.upper()) for f in dataclasses.fields(cls)}
    clash = sorted(set(keys.values()) & _DRIVER_KEYS)
    if clash or len(set(keys.values())) != len(keys):
        raise RuntimeError(
            f"BiSSLConfig fields map to BISSL keys that collide ({clash or 'with each other'}); "
            "add an entry to bissl_dense.detection.config.KEY_RENAMES"
        )
    return keys


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise RuntimeError(f"BiSSLConfig.{field.name} has no default; the BISSL node needs one")


def _bissl_defaults(config_class: type | None = None) -> dict[str, Any]:
    """``{BISSL.* key: node value}`` of the core's defaults (None written as NONE_VALUES)."""
    cls = config_class or _config_class()
    keys = bissl_keys(cls)
    out = {}
    for field in dataclasses.fields(cls):
        value = _field_default(field)
        if value is None:
            value = NONE_VALUES.get(field.name)
        out[keys[field.name]] = value
    return out


def bissl_config_of(cfg: CN) -> BiSSLConfig:
    """The core's :class:`BiSSLConfig` from the ``BISSL.*`` keys (every field, :func:`bissl_keys`).

    Raises:
        ValueError: the core refuses the values (its own checks, e.g. ``ALTERNATIONS 0``).
    """
    cls = _config_class()
    values = {}
    for name, key in bissl_keys(cls).items():
        value = cfg.BISSL.get(key)
        if name in NONE_VALUES and value == NONE_VALUES[name]:
            value = None
        values[name] = value
    return cls(**values)


def add_bissl_config(cfg: CN) -> CN:
    """Add BiSSL's keys (paper defaults, SPEC §4) to a detectron2 config, in place."""
    cfg.BISSL = CN()
    cfg.BISSL.STAGE = "finetune"
    cfg.BISSL.SEED = 0
    # λ, δ, K, the solver, N_L, N_U, T, clipping, autocast ...: BiSSLConfig's fields and defaults
    for key, value in _bissl_defaults().items():
        setattr(cfg.BISSL, key, value)  # yacs checks the value's type here
    cfg.BISSL.LOWER_LR = 1.0
    cfg.BISSL.LOWER_WEIGHT_DECAY = 1e-6
    cfg.BISSL.LOWER_IMS_PER_BATCH = 1024
    cfg.BISSL.PRETEXT = CN()
    cfg.BISSL.PRETEXT.METHOD = "simclr"  # or "byol"
    # torchvision-named backbone file (published Pretext_*_backbone); empty: the lower backbone
    # starts from the detector's own backbone and res5 (MODEL.WEIGHTS), θ_L = θ_U (SPEC §3).
    cfg.BISSL.PRETEXT.BACKBONE = ""
    # pretext head file (Pretext_*_head: projector, BYOL predictor). "random" must be explicit.
    cfg.BISSL.PRETEXT.HEAD = ""
    # folder of pretext images; empty: the images of DATASETS.TRAIN (labels unused)
    cfg.BISSL.PRETEXT.DATA_ROOT = ""
    cfg.BISSL.PRETEXT.IMAGE_SIZE = 96
    cfg.BISSL.PRETEXT.MIN_SCALE = 0.5
    cfg.BISSL.PRETEXT.TEMPERATURE = 0.5
    cfg.BISSL.PRETEXT.BYOL_MOMENTUM = 0.9995
    # "BN" (the paper) or "GN": GroupNorm in the lower backbone and projector, with
    # MODEL.RESNETS.NORM "GN", makes N processes compute exactly the union batch (tests)
    cfg.BISSL.PRETEXT.NORM = "BN"
    cfg.BISSL.RESULTS_FILE = "results.json"
    # periodic checkpoints kept on disk (the newest; model_final is kept apart), as mmengine's
    # max_keep_ckpts=2 in the mmengine configs: a BiSSL checkpoint (detector, pretext model, both
    # optimisers) of R50-C4 is ~0.5 GB. 0 keeps every one.
    cfg.SOLVER.MAX_TO_KEEP = 2
    cfg.DATASETS.VOC_ROOT = ""
    # A validation split held out of VOC07+12 trainval (SPEC §5: validation is held out of the
    # training data), for BiSSL-stage validation and searches; VOC07 test stays the test set.
    # VAL_FRACTION > 0 registers "voc_0712_val" (the held-out images) and
    # "voc_0712_trainval_minus_val" (the rest) beside detectron2's voc_* sets.
    cfg.DATASETS.VAL_FRACTION = 0.0
    cfg.DATASETS.VAL_SEED = 0
    # where the split is written once and read by every later run and process; empty:
    # <VOC root>/bissl_splits/voc0712_val_<fraction>_seed<seed>.json
    cfg.DATASETS.VAL_SPLIT_FILE = ""
    cfg.MODEL.ROI_HEADS.FREEZE_RES5 = False
    return cfg


def check_config(cfg: CN) -> None:
    """Refuse settings that would silently go wrong (ENVIRONMENT.md's detectron2 pitfalls)."""
    problems = []
    if cfg.BISSL.STAGE not in STAGES:
        problems.append(f"BISSL.STAGE={cfg.BISSL.STAGE!r} (one of {STAGES})")
    weights = str(cfg.MODEL.WEIGHTS)
    if not weights:
        problems.append(
            "MODEL.WEIGHTS is empty: every parameter's initialisation must be explicit; set it "
            "to a converted backbone (.pkl from `bissl export --to detectron2`), a detector "
            "checkpoint (.pth), or 'random' for detectron2's random initialisation"
        )
    if "://" in weights:
        problems.append(
            f"MODEL.WEIGHTS={weights!r} is a URL: initialisation must be explicit and offline; "
            "pass a converted backbone (`bissl export BACKBONE --to detectron2 --out FILE.pkl`) "
            "or a detector checkpoint"
        )
    if cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.BISSL.STAGE != "warmup":
        problems.append(
            "MODEL.RESNETS.NORM='FrozenBN' with self-supervised weights diverges; use BN/SyncBN"
        )
    if cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        problems.append("MODEL.RESNETS.STRIDE_IN_1X1=True does not match torchvision ResNets")
    if cfg.INPUT.FORMAT != "RGB":
        problems.append(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: torchvision backbones expect RGB")
    if cfg.MODEL.RESNETS.DEPTH != 50:
        problems.append(f"MODEL.RESNETS.DEPTH={cfg.MODEL.RESNETS.DEPTH}: C4 BiSSL needs 50")
    if int(cfg.SOLVER.MAX_TO_KEEP) < 0:
        problems.append(
            f"SOLVER.MAX_TO_KEEP={cfg.SOLVER.MAX_TO_KEEP} (>= 0; 0 keeps every checkpoint)"
        )
    try:
        bissl_config_of(cfg)
    except (TypeError, ValueError) as err:  # the core's own checks of the BISSL.* values
        problems.append(str(err))
    if float(cfg.BISSL.GRAD_CLIP) < 0:  # the core does not check it; a negative norm flips grads
        problems.append(f"BISSL.GRAD_CLIP={cfg.BISSL.GRAD_CLIP} (>= 0; 0: no clipping)")
    problems += _val_split_problems(cfg)
    if cfg.BISSL.STAGE == "bissl" and cfg.BISSL.PRETEXT.METHOD not in ("simclr", "byol"):
        problems.append(f"BISSL.PRETEXT.METHOD={cfg.BISSL.PRETEXT.METHOD!r} (simclr or byol)")
    if problems:
        raise ConfigError("invalid detection config:\n  - " + "\n  - ".join(problems))


def _val_split_problems(cfg: CN) -> list[str]:
    """The held-out split's keys, and no training on its images (SPEC §5)."""
    from bissl_dense.detection.data import _OVERLAPPING, HELD_OUT_SETS, TRAIN_MINUS_VAL

    fraction = float(cfg.DATASETS.VAL_FRACTION)
    problems = []
    if not 0.0 <= fraction < 1.0:
        problems.append(f"DATASETS.VAL_FRACTION={fraction} (in [0, 1); 0: no validation split)")
    if int(cfg.DATASETS.VAL_SEED) < 0:
        problems.append(f"DATASETS.VAL_SEED={cfg.DATASETS.VAL_SEED} (>= 0)")
    named = [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n in HELD_OUT_SETS]
    if fraction <= 0 and named:
        problems.append(
            f"{', '.join(named)} need DATASETS.VAL_FRACTION > 0 (the share of VOC07+12 trainval "
            "held out for validation)"
        )
    leaking = [n for n in cfg.DATASETS.TRAIN if n in _OVERLAPPING]
    if fraction > 0 and leaking:
        problems.append(
            f"DATASETS.TRAIN has {', '.join(leaking)} while DATASETS.VAL_FRACTION={fraction} holds "
            f"images of it out for validation: train on ('{TRAIN_MINUS_VAL}',) instead"
        )
    return problems


def load_config(config_file: str, opts: list[str] | None = None) -> CN:
    """detectron2's config with BiSSL's keys, merged from ``config_file`` and ``KEY VALUE`` pairs.

    Unknown keys fail with detectron2's message naming the key.
    """
    import bissl_dense.detection.model  # noqa: F401  registers Res5ROIHeadsExtraNorm

    cfg = add_bissl_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(f"{config_file}: {err}") from err
    check_config(cfg)
    return cfg
