"""The package installs: `pip install .` builds a wheel of fusion_dag with the pinned runtime."""

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_pip_builds_a_wheel_of_the_package_with_its_pinned_dependencies(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "workflow" / "scripts" / "fusion_dag", source / "workflow/scripts/fusion_dag"
    )
    for name in ("pyproject.toml", "requirements.txt", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "wheels"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("fusion_dag-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "fusion_dag/image.py" in names and "fusion_dag/__init__.py" in names
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line]
    assert all(f"Requires-Dist: {pin}" in metadata for pin in pins)
