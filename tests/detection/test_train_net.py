"""``tools/train_net.py`` checks the data once, in the launching process: on a machine without the
VOC data the published command ends in one line naming the missing directory and what to set,
not in a traceback from each of the ``--num-gpus`` workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.detection._d2 import ROOT, require_detectron2

require_detectron2()

from bissl_dense.detection import train_net  # noqa: E402

VOC_BISSL = str(ROOT / "configs" / "voc_bissl.yaml")


def _error_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert train_net.main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()


def test_missing_voc_root_is_one_line_naming_the_directory_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the config's DATASETS.VOC_ROOT "data/voc" is relative
    (line,) = _error_lines(capsys, ["--config-file", VOC_BISSL, "--num-gpus", "4"])
    assert line.startswith("train_net: error: DATASETS.VOC_ROOT='data/voc'")
    assert str(tmp_path / "data" / "voc") in line and "$DETECTRON2_DATASETS" in line


def test_missing_detectron2_datasets_is_one_line_naming_the_directory_and_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    argv = ["--config-file", VOC_BISSL, "--num-gpus", "4", "DATASETS.VOC_ROOT", ""]
    (line,) = _error_lines(capsys, argv)
    assert line.startswith("train_net: error: DATASETS.VOC_ROOT is empty")
    assert f"missing {tmp_path / 'datasets' / 'VOC2007' / 'Annotations'}" in line
    assert "DETECTRON2_DATASETS" in line
