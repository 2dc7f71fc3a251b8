"""The built wheel, installed into a fresh virtual environment, inside a project that has its own ``api/``,
``store/``, ``projections/`` and ``migrations/`` packages: confledger's names never collide with the user's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("confledger", "store", "projections", "api", "migrations", "examples")
NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db", "*.db-*", "*.key", "*-token", "*.token")

USER_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import sys

    import api, migrations, projections, store  # the user's own packages, not confledger's
    assert all(module.__file__.startswith(sys.argv[1]) for module in (api, migrations, projections, store))

    from pydantic import BaseModel

    from confledger import ConfigReloader, EventLog, ReloadStatus, ReloadTrigger, __version__


    class Settings(BaseModel):
        pool_size: int
        name: str


    async def main() -> None:
        async with ConfigReloader(
            "sqlite:///app.db", config_model=Settings, config_source="config.yaml"
        ) as reloader:
            assert reloader.current.config.pool_size == 5
            with open("config.yaml", "w") as handle:
                handle.write("pool_size: 7\\nname: shop\\n")
            operation = await reloader.reload_config(ReloadTrigger.MANUAL)
            assert operation.status is ReloadStatus.SUCCESS, operation
            assert reloader.current.config.pool_size == 7
        with EventLog("sqlite:///app.db") as log:
            assert log.verify().ok
        print("reloaded", __version__)


    asyncio.run(main())
    """
)


def _run(*command: str | Path, cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the shipped folders, so the test proves they are enough and leaves no build/
    # or egg-info behind in the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    for folder in SHIPPED:
        shutil.copytree(ROOT / folder, source / folder, ignore=NOT_SHIPPED)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source, cwd=source)
    (built,) = out.glob("confledger-*.whl")
    return built


def test_the_wheel_installs_only_confledger(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
        names = archive.namelist()
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"confledger"}
    for expected in (
        "confledger/__init__.py",
        "confledger/py.typed",
        "confledger/store/log.py",
        "confledger/projections/history.py",
        "confledger/api/routes/operations.py",
        "confledger/migrations/env.py",
        "confledger/migrations/script.py.mako",
        "confledger/examples/config.yaml",
    ):
        assert expected in names


def test_the_installed_wheel_works_beside_a_users_own_packages(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)

    project = tmp_path / "project"
    for package in ("api", "store", "projections", "migrations"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f'"""The user\'s own {package} package."""\n')
    (project / "api" / "lifecycle.py").write_text("RAISES_IF_IMPORTED_BY_CONFLEDGER = True\n")
    (project / "migrations" / "versions").mkdir()
    (project / "migrations" / "env.py").write_text("raise RuntimeError('not confledger\\'s migrations')\n")
    (project / "config.yaml").write_text("pool_size: 5\nname: shop\n")
    (project / "use_it.py").write_text(USER_SCRIPT)

    python = venv / "bin" / "python"
    assert _run(python, "use_it.py", str(project), cwd=project).strip() == "reloaded 0.1.0"
    assert "Usage" in _run(venv / "bin" / "confledger", "--help", cwd=project)
    current = _run(
        venv / "bin" / "confledger", "db", "current", "--database", "sqlite:///app.db", cwd=project
    )
    assert current.strip()
    # Nothing but confledger (and its dist-info) went into site-packages from our wheel.
    listing = _run(python, "-m", "pip", "show", "-f", "confledger", cwd=project)
    files = [line.strip() for line in listing.splitlines() if line.startswith("  ")]
    assert files
    assert all(f.startswith(("confledger/", "confledger-", "../../../bin/")) for f in files), files
