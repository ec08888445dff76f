"""model.json as users edit it by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.models import write_fake_model


def test_a_model_json_saved_with_a_bom_is_read(tmp_path: Path) -> None:
    # Windows editors (Notepad before 2019, PowerShell 5's Out-File -Encoding utf8) add one.
    folder = write_fake_model(tmp_path / "models", "with-bom")
    settings = folder / "model.json"
    settings.write_bytes(b"\xef\xbb\xbf" + settings.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "ember", "models", "list", "--models-dir", str(tmp_path / "models")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["with-bom", "fake", "8", "dims", "16", "tokens", "embedding"]
