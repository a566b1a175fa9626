"""Fixed against learned fusion weights and temperature (``fusion.learn``), nested, on the same
folds and models.

    python bench/protocol.py          # the default demo config, RESULTS.md section
    python bench/protocol.py --tiny   # 40 patients, tiny branches: writes nothing

One workflow run trains every model with ``fusion.learn: []``; two more runs in the same folder
change only ``fusion.learn`` (``[weights]``, then ``[weights, temperature]``), which re-runs
only the fusion and aggregation jobs, so the three settings share the folds, the forests and
the image branches. For each combination's complete rows the section shows the headline's
pooled out-of-fold kappa (with its corrected interval), log loss, Brier score and ECE, the
folds' learned metadata weight (mean and range, from ``learned.tsv``) and temperature. All
three are nested: no setting chooses anything on a validation visit.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from run import demo_settings, machine, markdown_table, snakemake, write_section  # noqa: E402

HEADING = "## Learned fusion weights and temperature (nested)"
SETTINGS = {
    "fixed": [],
    "learned weights": ["weights"],
    "learned weights + T": ["weights", "temperature"],
}


def measure(workdir: Path, config: dict) -> list:
    """Run the three settings in ``workdir``; return one record per setting: its name, wall
    seconds, the headline table and each combination's learned table."""
    records = []
    for name, learn in SETTINGS.items():
        config["fusion"]["learn"] = learn
        seconds, _ = snakemake(workdir, "fusion_results", config=config)
        headline = pd.read_csv(workdir / "results/fusion_results.tsv", sep="\t")
        learned = {}
        if learn:
            for combination in headline["combination"].unique():
                path = workdir / f"results/fusion/{combination}/learned.tsv"
                learned[combination] = pd.read_csv(path, sep="\t")
        records.append(
            {"setting": name, "seconds": seconds, "headline": headline, "learned": learned}
        )
    return records


def weight_cell(learned: pd.DataFrame | None) -> str:
    """The folds' learned metadata weight: mean (min to max), or ``fixed``."""
    if learned is None or "weight_metadata" not in learned or not learned["weights_learned"].all():
        return "fixed"
    values = learned["weight_metadata"]
    return f"{values.mean():.2f} ({values.min():.2f} to {values.max():.2f})"


def temperature_cell(learned: pd.DataFrame | None) -> str:
    """The folds' temperature: mean (min to max), or an en dash."""
    if learned is None or learned["temperature"].isna().all():
        return "–"
    values = learned["temperature"]
    return f"{values.mean():.2f} ({values.min():.2f} to {values.max():.2f})"


def report(records: list, seconds: float, tiny: bool, config: dict) -> str:
    """The RESULTS.md section."""
    rows = []
    for record in records:
        headline = record["headline"]
        for row in headline[headline["rows"] == "complete"].itertuples(index=False):
            learned = record["learned"].get(row.combination)
            rows.append(
                (
                    row.combination,
                    record["setting"],
                    f"{row.kappa_mean:.3f} [{row.kappa_ci_low:.3f}, {row.kappa_ci_high:.3f}]",
                    f"{row.log_loss_mean:.3f}",
                    f"{row.brier_mean:.3f}",
                    f"{row.ece_mean:.3f}",
                    weight_cell(learned),
                    temperature_cell(learned),
                )
            )
    rows.sort(key=lambda row: row[0])
    times = ", ".join(f"{r['setting']} {r['seconds']:.0f} s" for r in records)
    header = (
        f"{HEADING}\n\nMachine: {machine()}.\n"
        f"Config: {'tiny (--tiny)' if tiny else 'default demo'}, "
        f"{config['cv']['folds']} folds x {config['cv']['repeats']} repeats; "
        f"`python bench/protocol.py{' --tiny' if tiny else ''}` ({seconds:.0f} s: {times}; "
        "the learned settings re-run only the fusion and aggregation jobs). Complete rows; "
        "kappa with its corrected interval; weight: the folds' learned metadata weight, mean "
        "(range); T: the folds' temperature.\n\n"
    )
    headings = ["combination", "fusion.learn", "kappa", "log loss", "Brier", "ECE", "weight", "T"]
    return header + markdown_table(headings, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass that writes nothing")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    with open(REPO / "config/config.yaml") as handle:
        config = yaml.safe_load(handle)
    demo_settings(config, args.tiny, 1)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-protocol-"))
    started = time.perf_counter()
    records = measure(root, config)
    section = report(records, time.perf_counter() - started, args.tiny, config)
    print(section)
    if not args.tiny:
        write_section(HEADING, section)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
