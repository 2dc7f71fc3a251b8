"""The style and typing rules, run by the default suite so CI holds them: ruff everywhere, mypy (strict
for ``confledger.store`` and ``confledger.projections``, as ``pyproject.toml`` says) over the package,
and no production module longer than a reader can hold (``MAX_MODULE_LINES``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("store", "projections", "api", "migrations", "examples")
# A module past this is doing more than one thing: split it by concept, as store/log_reads.py was.
MAX_MODULE_LINES = 800


def _run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_lint_passes() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = _run(sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes(tmp_path: Path) -> None:
    # mypy resolves modules by walking directories and never runs the editable install's import hook,
    # so it is shown the installed shape: confledger/ holding the root folders under their package names.
    package = tmp_path / "confledger"
    package.mkdir()
    for path in (ROOT / "confledger").iterdir():
        (package / path.name).symlink_to(path)
    for layer in LAYERS:
        (package / layer).symlink_to(ROOT / layer, target_is_directory=True)
    result = _run(
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        ROOT / "pyproject.toml",
        "--cache-dir",
        tmp_path / ".mypy_cache",
        "-p",
        "confledger",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_production_module_is_over_the_line_limit() -> None:
    modules = [path for layer in (*LAYERS, "confledger") for path in (ROOT / layer).rglob("*.py")]
    assert len(modules) > 50  # the layers were found
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in modules
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"over {MAX_MODULE_LINES} lines: {too_long}"
