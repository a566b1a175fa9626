"""The protocol on the demo: fixed, learned and leaky fusion weights, nested and leaky label
screening, each leaky row beside its nested counterpart, on the same folds and models.

    python bench/protocol.py          # the default demo config, RESULTS.md section
    python bench/protocol.py --study  # the demo generator at the study's size (268 patients)
    python bench/protocol.py --tiny   # 40 patients, tiny branches: writes nothing

One workflow run of the ``protocol`` target (``fusion.learn: []``, no ``label_screen``): it
trains the folds' forests and image branches once, computes the weight rows from their cached
fold probabilities and refits only the forest for the screening rows
(``fusion_dag.protocol``). The section is ``results/protocol.tsv`` for people, with each
setting's chosen metadata weight and temperature per fold (mean and range, from
``results/protocol/choices.tsv``).
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

from run import SCALES, demo_settings, machine, markdown_table, snakemake, write_section  # noqa: E402

# Each size writes its own section, so the demo's and the study's tables stand side by side
# (neither heading begins the other, so each replaces only its own).
HEADINGS = {
    "demo": "## Protocol on the demo: nested and leaky weights and screening",
    "study": "## Protocol at the study's size: nested and leaky weights and screening",
}


def measure(workdir: Path, config: dict) -> dict:
    """Run the protocol target in ``workdir``; return its wall seconds, the jobs it ran, the
    protocol table and the per-fold choices."""
    config["fusion"]["learn"] = []
    config["label_screen"] = None
    seconds, jobs = snakemake(workdir, "protocol", config=config)
    results = workdir / "results"
    return {
        "seconds": seconds,
        "jobs": jobs,
        "table": pd.read_csv(results / "protocol.tsv", sep="\t"),
        "choices": pd.read_csv(results / "protocol/choices.tsv", sep="\t"),
    }


def spread(values: pd.Series) -> str:
    """``mean (min to max)`` of a setting's per-fold values, or an en dash without any."""
    values = values.dropna()
    if values.empty:
        return "–"
    return f"{values.mean():.2f} ({values.min():.2f} to {values.max():.2f})"


def cell(value, form: str = "{:.3f}") -> str:
    """A number in ``form``, or an en dash where the row has none."""
    return "–" if pd.isna(value) else form.format(value)


def report(measured: dict, size: str, config: dict) -> str:
    """The RESULTS.md section, from ``results/protocol.tsv`` and ``choices.tsv``."""
    table, choices = measured["table"], measured["choices"]
    rows = []
    for row in table.itertuples(index=False):
        mine = choices[
            (choices["combination"] == row.combination) & (choices["setting"] == row.setting)
        ]
        weights = mine["weight_metadata"] if "weight_metadata" in mine else pd.Series(dtype=float)
        gain = (
            "–"
            if pd.isna(row.kappa_gain_folds)
            else f"{row.kappa_gain_folds:+.3f} [{row.kappa_gain_ci_low:+.3f}, "
            f"{row.kappa_gain_ci_high:+.3f}]"
        )
        rows.append(
            (
                row.combination,
                row.setting + ("" if row.nested else " (optimistic)"),
                f"{row.kappa:.3f} [{row.kappa_ci_low:.3f}, {row.kappa_ci_high:.3f}]",
                gain,
                cell(row.p_value),
                str(row.visits),
                cell(row.visits_screened, "{:.1f}"),
                cell(row.brier),
                cell(row.ece),
                cell(row.overstatement, "{:+.3f}"),
                spread(weights),
                spread(mine["temperature"]),
            )
        )
    jobs = ", ".join(f"{rule} {count}" for rule, count in sorted(measured["jobs"].items()))
    option = "" if size == "demo" else f" --{size}"
    header = (
        f"{HEADINGS.get(size, HEADINGS['demo'])}\n\nMachine: {machine()}.\n"
        f"Config: the default demo's ({size}: {config['demo']['patients']} patients), "
        f"{config['cv']['folds']} folds x {config['cv']['repeats']} repeats; "
        f"`python bench/protocol.py{option}` ({measured['seconds']:.0f} s, "
        f"one run of the `protocol` target from no results: {jobs}). Kappa with the headline's "
        "corrected interval; gain: the mean per-fold kappa gain over `fixed` on the visits both "
        "scored, with the run's corrected t interval, p not adjusted; screened: visits left "
        "out of a fold's training (mean over folds), or dropped from the table (leaky screen, "
        "mean over repeats); overstatement: a leaky row's kappa minus its nested counterpart's; "
        "weight, T: the folds' metadata weight and temperature, mean (range). Leaky rows are "
        "optimistic. The screening rows refit only the forest; image members keep their "
        "unscreened branches.\n\n"
    )
    headings = [
        "combination",
        "setting",
        "kappa",
        "gain over fixed",
        "p",
        "visits",
        "screened",
        "Brier",
        "ECE",
        "overstatement",
        "weight",
        "T",
    ]
    return header + markdown_table(headings, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--tiny", action="store_true", help="a quick pass that writes nothing")
    sizes.add_argument(
        "--study", action="store_true", help=f"the study's size ({SCALES['study']} patients)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here")
    args = parser.parse_args()
    with open(REPO / "config/config.yaml") as handle:
        config = yaml.safe_load(handle)
    demo_settings(config, args.tiny, 1)
    size = "tiny" if args.tiny else "study" if args.study else "demo"
    if args.study:
        config["demo"]["patients"] = SCALES["study"]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-protocol-"))
    started = time.perf_counter()
    measured = measure(root, config)
    section = report(measured, size, config)
    print(section)
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if not args.tiny:
        write_section(HEADINGS[size], section)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
