"""The detectron2 gate of the detection tests: skip with the reason when detectron2 is missing,
fail instead under ``BISSL_REQUIRE_DETECTRON2=1`` (what .ci/run sets)."""

from __future__ import annotations

import sys

import pytest

from tests.detection._d2 import require_detectron2


def test_missing_detectron2_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detectron2", None)  # as if it were not installed
    monkeypatch.delenv("BISSL_REQUIRE_DETECTRON2", raising=False)
    with pytest.raises(pytest.skip.Exception, match="detectron2 is not installed"):
        require_detectron2()
    monkeypatch.setenv("BISSL_REQUIRE_DETECTRON2", "1")
    with pytest.raises(pytest.fail.Exception, match="BISSL_REQUIRE_DETECTRON2=1 but"):
        require_detectron2()
