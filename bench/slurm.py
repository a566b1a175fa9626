"""SLURM submissions and wall time of the tiny case, with and without the workflow's localrules.

    python bench/slurm.py      # starts a one-node SLURM here (as FUSION_DAG_SLURM_TEST=1 does)

Runs the tiny metadata-only case of tests/test_slurm.py through ``--profile profiles/slurm``
twice on the same cluster: with this workflow as it is, and with a copy whose Snakefile lacks
its ``localrule: True`` lines (every job then goes through sbatch, as before the layout issue).
Prints the submission counts and wall times; asserts nothing about time.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "workflow" / "scripts"))


def without_localrules(target: Path) -> Path:
    """A copy of the workflow whose rules declare no ``localrule: True``; its Snakefile's path."""
    shutil.copytree(REPO / "workflow", target / "workflow")
    shutil.copytree(REPO / "config", target / "config")
    workflow = target / "workflow"
    for rules in [workflow / "Snakefile", *(workflow / "rules").glob("*.smk")]:
        rules.write_text(re.sub(r"\n    localrule: True\n", "\n", rules.read_text()))
    return workflow / "Snakefile"


def cluster_run(workdir: Path, snakefile: Path, environment: dict) -> tuple[float, int]:
    """(wall seconds, sbatch submissions) of the tiny case through the SLURM profile."""
    from tests.test_slurm import cluster_command

    workdir.mkdir(parents=True)
    command = cluster_command(workdir, snakefile)
    start = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(output[-3000:])
    return elapsed, len(re.findall(r"has been submitted with SLURM jobid", output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    # The cluster helper (and TensorFlow, through the tests' fixtures) load only for a run.
    from tests.local_slurm import local_slurm

    root = Path(tempfile.mkdtemp(prefix="fusion-dag-slurm-"))
    before = without_localrules(root / "before")
    (root / "cluster").mkdir()
    with local_slurm(root / "cluster") as environment:
        runs = {
            "with localrules (now)": cluster_run(
                root / "now", REPO / "workflow" / "Snakefile", environment
            ),
            "without localrules (before)": cluster_run(root / "run_before", before, environment),
        }
    print("| workflow | sbatch submissions | wall time |\n|---|--:|--:|")
    for name, (seconds, submissions) in runs.items():
        print(f"| {name} | {submissions} | {seconds:.1f} s |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
