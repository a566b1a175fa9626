"""The workflow stays `snakemake --lint` clean, `snakefmt` formatted and `ruff` clean."""

import subprocess
import sys

from tests.conftest import REPO


def test_snakemake_lint_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_snakefiles_are_snakefmt_formatted():
    workflow = REPO / "workflow"
    files = [str(workflow / "Snakefile"), *map(str, sorted((workflow / "rules").glob("*.smk")))]
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_python_is_ruff_clean_and_formatted():
    """The package, rule scripts, tests and benchmarks pass ``ruff check`` and ``ruff format``."""
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "workflow", "tests", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
