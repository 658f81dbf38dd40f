"""``write_single_level_config``: either baseline's config over any BiSSL config, the same as the
shipped configs that state those differences by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from bissl_dense.baselines.single_level import write_single_level_config
from bissl_dense.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "classification"


def _resolved(path: Path) -> dict:
    cfg = Config.fromfile(str(path)).to_dict()
    cfg.pop("custom_imports")  # compared separately (order of the same modules)
    return cfg


@pytest.mark.parametrize("kind", ["weighted_sum", "data_mix"])
def test_derived_config_equals_the_shipped_one(kind: str, tmp_path: Path) -> None:
    bissl = CONFIGS / "bissl_simclr_resnet18_synthetic.py"
    derived = write_single_level_config(kind, bissl, tmp_path / f"{kind}.py")
    shipped = CONFIGS / f"{kind}_simclr_resnet18_synthetic.py"
    assert _resolved(derived) == _resolved(shipped)
    imports = Config.fromfile(str(derived)).custom_imports.imports
    assert sorted(imports) == sorted(Config.fromfile(str(shipped)).custom_imports.imports)


def test_derived_config_over_a_published_bissl_config(tmp_path: Path) -> None:
    """Any of the 12 data sets: the BYOL BiSSL config for pets keeps its data, model and budget,
    and gets the baseline's loop, optimiser and export hook."""
    bissl = CONFIGS / "bissl_byol_resnet50_pets.py"
    cfg = Config.fromfile(str(write_single_level_config("weighted_sum", bissl, tmp_path / "w.py")))
    base = Config.fromfile(str(bissl))
    assert cfg.train_cfg.type == "WeightedSumLoop" and cfg.train_cfg.w == 0.5
    assert cfg.train_cfg.bissl == base.train_cfg.bissl  # T, N_L, N_U: the budget
    assert cfg.model == base.model and cfg.train_dataloader == base.train_dataloader
    assert cfg.optim_wrapper.lower == base.optim_wrapper.lower
    assert cfg.optim_wrapper.constructor == "SingleLevelOptimWrapperConstructor"
    assert [h["type"] for h in cfg.custom_hooks] == ["ExportBackboneHook"]
    assert "bissl_dense.baselines.weighted_sum" in cfg.custom_imports.imports


def test_a_config_that_is_not_bissl_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a BiSSL config"):
        write_single_level_config(
            "data_mix", CONFIGS / "finetune_resnet18_synthetic.py", tmp_path / "d.py"
        )
    with pytest.raises(ConfigError, match="no single-level baseline 'mix'"):
        write_single_level_config("mix", CONFIGS / "bissl_simclr_resnet18_synthetic.py", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
