"""The optional OpenVINO runtime in tests: a skip on installs without the extra, a failure in CI."""

from __future__ import annotations

import os

import pytest


def require_openvino() -> None:
    """Skip the calling test when the `openvino` extra is absent; CI sets
    EMBER_REQUIRE_OPENVINO=1 so a missing extra fails there instead of skipping silently."""
    if os.environ.get("EMBER_REQUIRE_OPENVINO") == "1":
        import openvino  # noqa: F401

        return
    pytest.importorskip("openvino", reason="the openvino extra is absent")
