"""The `ember` entry point: a Ctrl-C while the CLI's modules import ends the command quietly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Runs the real entry point with an import hook that raises KeyboardInterrupt when the CLI's
# `serve` module starts to import, as a Ctrl-C half a second after `ember serve` would.
_INTERRUPTED_IMPORT = textwrap.dedent(
    """
    import sys

    class InterruptImport:
        def find_spec(self, name, path=None, target=None):
            if name == "ember.cli.serve":
                raise KeyboardInterrupt
            return None

    sys.meta_path.insert(0, InterruptImport())
    sys.argv = ["ember", "serve"]
    from ember.launch import main
    main()
    """
)


def test_ctrl_c_while_the_cli_imports_exits_130_without_a_traceback() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 130
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def test_the_console_script_and_python_dash_m_use_the_entry_point() -> None:
    root = Path(__file__).resolve().parents[2]
    assert 'ember = "ember.launch:main"' in (root / "pyproject.toml").read_text()
    run = subprocess.run(
        [sys.executable, "-m", "ember", "version"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0
    assert run.stdout.startswith("ember ")
