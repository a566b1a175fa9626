"""The README's two commands as a newcomer runs them, timed in a fresh copy of the repository.

    python bench/quickstart.py            # the quick start; docs/benchmarks.md, docs/evaluation.md
    python bench/quickstart.py --suite    # the README's test command; docs/benchmarks.md
    python bench/quickstart.py --tiny     # metadata alone on 2 folds; writes nothing

Each figure this script measures lives in one place, between markers in the docs
(``<!-- measured: NAME -->...<!-- /measured -->``, invisible when rendered) that only this script
rewrites; the demo's tables in docs/evaluation.md are the run's own ``fusion_results.md``. The
copy is a clone of the committed state, so nothing from this checkout's ``results/``,
caches or uncommitted edits leaks into the timing.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICK_START = ["snakemake", "--cores", "8", "fusion_results"]
TEST_COMMAND = ["python", "-m", "pytest"]
TINY = ["--config", "combinations=[[metadata]]", "cv={folds: 2, repeats: 1, seed: 42}"]


def fresh_copy(root: Path) -> Path:
    """A clone of the repository's committed state in ``root``, as a newcomer starts from
    (the tests read the clone's own ``git ls-files``)."""
    folder = root / "fusion-dag"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(folder)], check=True)
    return folder


def timed(command: list, folder: Path) -> tuple[float, float, str]:
    """Wall seconds, peak resident memory of the largest process (GB) and the output of
    ``command`` run in ``folder``; a failure stops the benchmark with the output's tail."""
    command = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        failures = "\n".join(re.findall(r"^(?:FAILED|ERROR) .*$", output, re.M)[:20])
        raise SystemExit(f"{' '.join(command)} failed in {folder}:\n{failures}\n{output[-3000:]}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB on Linux
    return seconds, peak_gb, output


def duration(seconds: float) -> str:
    """``4 min 36 s``: how a person reads a wall time."""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def fill(text: str, name: str, value: str) -> str:
    """``text`` with the span between ``name``'s markers replaced by ``value``.

    A missing marker is an error rather than a silent no-op: the figure would otherwise stay
    stale in the docs while the script reports success.
    """
    pattern = re.compile(rf"(<!-- measured: {re.escape(name)} -->)(.*?)(<!-- /measured -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no '<!-- measured: {name} -->' marker to fill")
    return pattern.sub(lambda match: match.group(1) + value + match.group(3), text)


def write(document: str, name: str, value: str) -> None:
    """Rewrite the ``name`` span of ``document`` (a path relative to the repository)."""
    path = REPO / document
    path.write_text(fill(path.read_text(), name, value))


def job_count(output: str) -> int:
    """Jobs Snakemake ran, from its last ``N of N steps`` line."""
    return int(re.findall(r"(\d+) of \d+ steps", output)[-1])


def demo_tables(folder: Path) -> str:
    """The run's ``fusion_results.md`` without its title, as a doc section's body."""
    text = (folder / "results" / "fusion_results.md").read_text()
    return "\n" + re.sub(r"\A# .*\n+", "", text).strip() + "\n"


def quick_start(tiny: bool) -> None:
    """Run the quick start in a fresh copy; unless ``tiny``, write its figures to the docs."""
    with tempfile.TemporaryDirectory(prefix="fusion-dag-quickstart-") as root:
        folder = fresh_copy(Path(root))
        seconds, peak_gb, output = timed(QUICK_START + (TINY if tiny else []), folder)
        jobs = job_count(output)
        measured = (
            f"{duration(seconds)} on {os.cpu_count()} cores"
            f" ({jobs} jobs, peak memory {peak_gb:.2f} GB)"
        )
        print(f"quick start: {measured}")
        if tiny:
            return
        write("docs/benchmarks.md", "quickstart", measured)
        write("docs/evaluation.md", "demo-results", demo_tables(folder))


def suite() -> None:
    """Run the README's test command in a fresh copy and write its wall time to the docs."""
    with tempfile.TemporaryDirectory(prefix="fusion-dag-suite-") as root:
        folder = fresh_copy(Path(root))
        seconds, _, output = timed(TEST_COMMAND, folder)
        passed = int(re.findall(r"(\d+) passed", output)[-1])
        measured = f"{duration(seconds)} on {os.cpu_count()} cores ({passed} tests)"
        print(f"test suite: {measured}")
        write("docs/benchmarks.md", "suite", measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", action="store_true", help="time the test command instead")
    parser.add_argument(
        "--tiny", action="store_true", help="metadata alone on 2 folds; nothing written"
    )
    args = parser.parse_args()
    if args.suite:
        suite()
    else:
        quick_start(args.tiny)


if __name__ == "__main__":
    main()
