"""detectron2 config keys of BiSSL and the checks every detection run makes at start (SPEC §4–§5).

``add_bissl_config(cfg)`` adds, with the paper's defaults:

* ``BISSL.STAGE``: ``"finetune"`` (plain detectron2 training), ``"warmup"`` (the downstream head
  only, on the frozen backbone and res5: SPEC §1 step 2) or ``"bissl"`` (the bilevel stage);
* ``BISSL.LAMBDA`` λ, ``BISSL.CG_ITERS`` K, ``BISSL.DAMPING`` δ, ``BISSL.CG``, ``BISSL.HVP``,
  ``BISSL.LOWER_STEPS`` N_L, ``BISSL.UPPER_STEPS`` N_U, ``BISSL.ALTERNATIONS`` T,
  ``BISSL.DISCARD_IJ`` (ablation), ``BISSL.GRAD_CLIP``;
* the lower level: ``BISSL.LOWER_LR``/``LOWER_WEIGHT_DECAY`` (LARS), ``BISSL.LOWER_IMS_PER_BATCH``
  (total over processes) and ``BISSL.PRETEXT.*`` (method, weights, data, augmentation).
  The upper level uses ``SOLVER.BASE_LR``, ``SOLVER.WEIGHT_DECAY``, ``SOLVER.MOMENTUM`` and
  ``SOLVER.IMS_PER_BATCH``, as detectron2 users expect;
* ``DATASETS.VOC_ROOT``: where ``VOC2007/`` and ``VOC2012/`` are (re-registers detectron2's
  ``voc_*`` data sets there; empty: detectron2's ``$DETECTRON2_DATASETS``);
* ``MODEL.WEIGHTS`` must be set: a converted backbone, a detector checkpoint or ``"random"``;
* ``MODEL.ROI_HEADS.FREEZE_RES5`` (the warm-up freezes res5 with the backbone).
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from bissl_dense.errors import ConfigError

__all__ = ["add_bissl_config", "check_config", "load_config"]

STAGES = ("finetune", "warmup", "bissl")


def add_bissl_config(cfg: CN) -> CN:
    """Add BiSSL's keys (paper defaults, SPEC §4) to a detectron2 config, in place."""
    cfg.BISSL = CN()
    cfg.BISSL.STAGE = "finetune"
    cfg.BISSL.SEED = 0
    cfg.BISSL.LAMBDA = 0.001
    cfg.BISSL.DAMPING = 10.0
    cfg.BISSL.CG_ITERS = 5
    cfg.BISSL.CG = "global"
    cfg.BISSL.HVP = "exact"
    cfg.BISSL.ALTERNATIONS = 500
    cfg.BISSL.LOWER_STEPS = 20
    cfg.BISSL.UPPER_STEPS = 8
    cfg.BISSL.DISCARD_IJ = False
    cfg.BISSL.GRAD_CLIP = 10.0
    # mixed precision of both levels' loss forward passes: "" (float32), "bfloat16", "float16"
    cfg.BISSL.AUTOCAST = ""
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
    if cfg.BISSL.STAGE == "bissl" and cfg.BISSL.PRETEXT.METHOD not in ("simclr", "byol"):
        problems.append(f"BISSL.PRETEXT.METHOD={cfg.BISSL.PRETEXT.METHOD!r} (simclr or byol)")
    if problems:
        raise ConfigError("invalid detection config:\n  - " + "\n  - ".join(problems))


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
