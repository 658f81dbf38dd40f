"""The ``BISSL`` node is generated from the core's ``BiSSLConfig`` (issue 21, item 6): every field
is a key with the core's default, a field added to the core appears without a change to the
detection code, the documented key names still work, and the values reach the solver the
trainer actually uses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.detection._d2 import TINY_CONFIG, require_detectron2, tiny_cfg, write_voc_data

require_detectron2()

from bissl_dense.core import BiSSLConfig  # noqa: E402
from bissl_dense.core import bilevel as core_bilevel  # noqa: E402
from bissl_dense.detection.config import (  # noqa: E402
    KEY_RENAMES,
    NONE_VALUES,
    bissl_config_of,
    bissl_keys,
    load_config,
)
from bissl_dense.errors import ConfigError  # noqa: E402

# The keys the driver documented before the node was generated (README, configs): they must
# keep their meaning.
DOCUMENTED = {
    "LAMBDA": "lam",
    "DAMPING": "damping",
    "CG_ITERS": "cg_iters",
    "CG": "cg",
    "HVP": "hvp",
    "ALTERNATIONS": "alternations",
    "LOWER_STEPS": "lower_steps",
    "UPPER_STEPS": "upper_steps",
    "DISCARD_IJ": "discard_implicit_jacobian",
    "GRAD_CLIP": "grad_clip_norm",
    "AUTOCAST": "autocast",
}


def _load(*opts: str):  # noqa: ANN202
    return load_config(str(TINY_CONFIG), ["MODEL.WEIGHTS", "random", *opts])


def test_every_core_field_is_a_key_with_the_core_default() -> None:
    from detectron2.config import get_cfg

    from bissl_dense.detection.config import add_bissl_config

    node = add_bissl_config(get_cfg()).BISSL
    keys = bissl_keys()
    core = BiSSLConfig()
    assert set(keys) == {f.name for f in dataclasses.fields(BiSSLConfig)}
    for field in dataclasses.fields(BiSSLConfig):
        value = getattr(core, field.name)
        expected = NONE_VALUES.get(field.name) if value is None else value
        assert node[keys[field.name]] == expected, field.name
    # read back unchanged: the node's defaults are the core's, None included (AUTOCAST "")
    assert dataclasses.asdict(bissl_config_of(add_bissl_config(get_cfg()))) == dataclasses.asdict(
        core
    )
    # the options the hand-written node had lost are there
    for key in ("SOLVER", "WARM_START", "RESIDUAL_EVERY", "TRAIN_PRETEXT_HEAD"):
        assert key in node
    # the documented names, and only those three through the rename table
    assert {k: keys[v] for k, v in DOCUMENTED.items()} == {k: k for k in DOCUMENTED}
    assert set(KEY_RENAMES) == {"lam", "grad_clip_norm", "discard_implicit_jacobian"}


def test_documented_and_new_keys_reach_the_core_config() -> None:
    cfg = _load(
        *("BISSL.LAMBDA", "0.5", "BISSL.DAMPING", "2.0", "BISSL.CG_ITERS", "3"),
        *("BISSL.SOLVER", "cg", "BISSL.CG", "layerwise", "BISSL.HVP", "finite_difference"),
        *("BISSL.ALTERNATIONS", "7", "BISSL.LOWER_STEPS", "4", "BISSL.UPPER_STEPS", "3"),
        *("BISSL.DISCARD_IJ", "True", "BISSL.GRAD_CLIP", "0.0", "BISSL.AUTOCAST", "bfloat16"),
        *("BISSL.WARM_START", "True", "BISSL.RESIDUAL_EVERY", "2"),
        *("BISSL.TRAIN_PRETEXT_HEAD", "False"),
    )
    assert bissl_config_of(cfg) == BiSSLConfig(
        lam=0.5,
        damping=2.0,
        cg_iters=3,
        solver="cg",
        cg="layerwise",
        hvp="finite_difference",
        alternations=7,
        lower_steps=4,
        upper_steps=3,
        discard_implicit_jacobian=True,
        grad_clip_norm=None,  # GRAD_CLIP 0: no clipping
        autocast="bfloat16",
        warm_start=True,
        residual_every=2,
        train_pretext_head=False,
    )
    assert bissl_config_of(_load()).autocast is None  # AUTOCAST "" (the default): float32


def test_a_new_core_field_appears_without_touching_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A core option added later (here: a subclass with three more fields, put where the core
    defines BiSSLConfig) is a BISSL key with its default and settable from the command line."""
    extended = dataclasses.make_dataclass(
        "BiSSLConfig",
        [
            ("new_tolerance", float, dataclasses.field(default=0.25)),
            ("new_flag", bool, dataclasses.field(default=False)),
            ("new_limit", "float | None", dataclasses.field(default=None)),
        ],
        bases=(BiSSLConfig,),
    )
    monkeypatch.setattr(core_bilevel, "BiSSLConfig", extended)
    cfg = _load()
    assert (cfg.BISSL.NEW_TOLERANCE, cfg.BISSL.NEW_FLAG, cfg.BISSL.NEW_LIMIT) == (0.25, False, None)
    built = bissl_config_of(cfg)
    assert isinstance(built, extended) and built.new_tolerance == 0.25 and built.new_limit is None
    cfg = _load("BISSL.NEW_TOLERANCE", "0.5", "BISSL.NEW_FLAG", "True", "BISSL.NEW_LIMIT", "3.0")
    built = bissl_config_of(cfg)
    assert (built.new_tolerance, built.new_flag, built.new_limit) == (0.5, True, 3.0)
    assert built.lam == BiSSLConfig().lam


def test_bad_values_are_one_config_error() -> None:
    with pytest.raises(ConfigError, match="alternations=0"):
        _load("BISSL.ALTERNATIONS", "0")
    with pytest.raises(ConfigError, match="autocast='half'"):
        _load("BISSL.AUTOCAST", "half")
    with pytest.raises(ConfigError, match="GRAD_CLIP=-1.0"):
        _load("BISSL.GRAD_CLIP", "-1.0")
    with pytest.raises(ConfigError, match="WARM_START"):
        _load("BISSL.WARM_START", "'yes'")  # yacs keeps the key's type (bool)


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc_data(tmp_path_factory.mktemp("voc"), n=8, size=48)


def test_solver_options_reach_the_trainers_implicit_solver(voc: Path, tmp_path: Path) -> None:
    """``BISSL.SOLVER cg BISSL.CG layerwise`` (and the other options) configure the solver and
    the step the detectron2 trainer runs, not only the config."""
    from bissl_dense.detection.trainer import BiSSLTrainer

    opts = ["BISSL.STAGE", "bissl", "BISSL.PRETEXT.HEAD", "random", "DATASETS.TEST", "()"]
    opts += ["BISSL.SOLVER", "cg", "BISSL.CG", "layerwise", "BISSL.WARM_START", "True"]
    opts += ["BISSL.CG_ITERS", "3", "BISSL.DAMPING", "2.0", "BISSL.LAMBDA", "0.5"]
    opts += ["BISSL.HVP", "recompute", "BISSL.RESIDUAL_EVERY", "3"]
    opts += ["BISSL.TRAIN_PRETEXT_HEAD", "False"]
    trainer = BiSSLTrainer(tiny_cfg(voc, tmp_path, *opts))
    solver = trainer.step_fn.implicit_solver
    assert (solver.solver, solver.cg, solver.warm_start) == ("cg", "layerwise", True)
    assert (solver.iters, solver.damping, solver.lam, solver.hvp) == (3, 2.0, 0.5, "recompute")
    assert trainer.step_fn.config.residual_every == 3
    assert trainer.step_fn.config.train_pretext_head is False
    # and the default stays the core's (MINRES, global)
    default = BiSSLTrainer(tiny_cfg(voc, tmp_path / "default", *opts[:6]))
    core = BiSSLConfig()
    assert (default.step_fn.implicit_solver.solver, default.step_fn.implicit_solver.cg) == (
        core.solver,
        core.cg,
    )
