"""External validation on the demo: final models on the first patients, predict the others.

    python bench/external.py           # 160 demo patients: train on 120, predict 40 (labelled)
    python bench/external.py --tiny    # a quick pass on a tiny config

The demo table is split by patient (sorted ids): the first ``--train-patients`` are the
training table of a normal run (``samples: train.csv``); the rest, with their labels, are the
new table (``predict: {samples: new.csv}``). One ``snakemake predict`` builds the final models
and the bundle, then predicts; the script prints the wall times, the bundle's size, how each
row was scored and the metrics table (results/predict/metrics.tsv), and writes them to
``external.md`` in the work folder.

Then, in the same work folder, what a deployed bundle tells a clinician (issue 40):
``snakemake temporal final_models predict`` with ``evaluation.temporal`` (the demo has no
date: the training patients' order in the table, the last 30 % held out) and
``predict.coverage: 0.9``. The temporal table, and the prediction sets' coverage and mean size
in cross-validation (the bundle's calibration record) and on the new patients (metrics.tsv),
go to docs/predict.md between its ``<!-- measured: external-later -->`` markers; with --tiny
they are printed and nothing is written.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from quickstart import duration, write  # noqa: E402
from run import snakemake  # noqa: E402

from fusion_dag.report import with_interval  # noqa: E402

TINY = {
    "cv": {"folds": 3, "repeats": 1, "seed": 42},
    "metadata_model": {"n_estimators": 30},
    "image_model": {
        "size": 24,
        "epochs": 3,
        "patience": 2,
        "warmup_epochs": 1,
        "intra_op_threads": 1,
    },
    "evaluation": {"bootstrap": 200},
}


def split_demo(workdir: Path, patients: int, train_patients: int) -> tuple[int, int]:
    """Write the demo, then train.csv and new.csv split by patient; return their row counts."""
    from fusion_dag.demo import write_demo

    write_demo(workdir / "demo.csv", patients=patients, seed=7)
    table = pd.read_csv(workdir / "demo.csv", dtype=str)
    first = sorted(table["patient_id"].unique())[:train_patients]
    train = table["patient_id"].isin(first)
    table[train].to_csv(workdir / "train.csv", index=False)
    table[~train].to_csv(workdir / "new.csv", index=False)
    return int(train.sum()), int((~train).sum())


# The issue-40 run: the training patients' temporal split (their order in the table: the demo
# has no date column) and 90 % prediction sets.
LATER = {"evaluation": {"temporal": {"column": None, "test": 0.3}}, "predict": {"coverage": 0.9}}


def with_later(config: dict) -> dict:
    """``config`` with :data:`LATER`'s keys merged into its sections."""
    return {**config, **{key: {**config.get(key, {}), **value} for key, value in LATER.items()}}


def later_section(workdir: Path, command: str, seconds: float) -> str:
    """The docs/predict.md section of the issue-40 run in ``workdir``: the temporal table
    (results/temporal.tsv), and the prediction sets' coverage and mean size in cross-validation
    (the bundle's calibration record of the predicted combination) and on the new patients
    (the fused row of results/predict/metrics.tsv)."""
    temporal = pd.read_csv(workdir / "results/temporal.tsv", sep="\t")
    card = json.loads((workdir / "results/final/model_card.json").read_text())
    level = f"{100 * card['performance']['confidence']:g} %"
    first = temporal.iloc[0]
    later = pd.DataFrame(
        {
            "combination": r["combination"],
            "later patients (visits)": f"{r['n_patients']} ({r['n_rows']})",
            f"kappa later ({level} CI)": with_interval(
                r["kappa"], r["kappa_ci_low"], r["kappa_ci_high"]
            ),
            f"kappa cv ({level} CI)": with_interval(
                r["cv_kappa"], r["cv_kappa_ci_low"], r["cv_kappa_ci_high"]
            ),
            "difference": f"{r['kappa_diff']:+.3f}",
        }
        for r in temporal.to_dict("records")
    )
    fused = pd.read_csv(workdir / "results/predict/metrics.tsv", sep="\t").iloc[0]
    combination = fused["predictor"]
    record = workdir / f"results/final/bundle/calibration/{combination}.json"
    cv = json.loads(record.read_text())["cross_validated"]
    sets = pd.DataFrame(
        [
            ["cross-validation (each fold's sets calibrated on the other folds)", cv["visits"]]
            + [f"{cv['set_coverage']:.3f}", f"{cv['set_size']:.2f}"],
            ["the new patients (the bundle's calibration)", fused["n_rows"]]
            + [f"{fused['set_coverage']:.3f}", f"{fused['set_size']:.2f}"],
        ],
        columns=["where", "visits", "coverage", "mean set size"],
    )
    return "\n".join(
        [
            "",
            f"`{command}` in the same folder ({duration(seconds)} on {os.cpu_count()} cores; "
            "`python bench/external.py`, which also writes this section): the models fit on "
            f"the {first['n_train_patients']} earlier training patients "
            f"({first['n_train_visits']} visits), scored on the {first['n_patients']} later ones, "
            f"beside each combination's cross-validated kappa on all "
            f"{first['n_train_patients'] + first['n_patients']}:",
            "",
            later.to_markdown(
                index=False,
                colalign=["left", "left", "left", "left", "right"],
                disable_numparse=True,
            ),
            "",
            f"Prediction sets of {combination} at coverage {cv['coverage']:g}:",
            "",
            sets.to_markdown(
                index=False, colalign=["left", "right", "right", "right"], disable_numparse=True
            ),
            "",
        ]
    )


def folder_size(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass on a tiny config")
    parser.add_argument("--patients", type=int, default=160)
    parser.add_argument("--train-patients", type=int, default=120)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here")
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-external-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n_train, n_new = split_demo(workdir, arguments.patients, arguments.train_patients)
    config = {
        **(TINY if arguments.tiny else {}),
        "samples": "train.csv",
        "image_dir": ".",
        # The demo's thermal image table holds both tables' visits: each run leaves the
        # other's rows out as image rows without a visit.
        "modalities": {
            "thermal_map": {
                "images": "thermal_images.csv",
                **({"size": TINY["image_model"]["size"]} if arguments.tiny else {}),
            }
        },
        "predict": {"samples": "new.csv", "images": {"thermal_map": "thermal_images.csv"}},
        # The bench measures the bundle as trained, a branch stuck at one class included
        # (final_models refuses that by default); the report names any such branch.
        "final": {"allow_collapsed": True},
    }
    # The bundle alone: the final_models target also writes the model card, which needs the
    # cross-validation this bench does not time.
    final_seconds, final_jobs = snakemake(
        workdir, "results/final/bundle", config=config, cores=arguments.cores
    )
    predict_seconds, predict_jobs = snakemake(
        workdir, "predict", config=config, cores=arguments.cores
    )
    predictions = pd.read_csv(workdir / "results/predict/predictions.tsv", sep="\t")
    metrics = pd.read_csv(workdir / "results/predict/metrics.tsv", sep="\t")
    bundle = workdir / "results/final/bundle"
    shown = ["predictor", "n_rows", "n_groups", "n_unscored"]
    for metric in ("kappa", "qwk", "balanced_accuracy", "macro_f1", "auc", "ece"):
        shown += [metric, f"{metric}_ci_low", f"{metric}_ci_high"]
    checks = json.loads((workdir / "results/final/bundle/manifest.json").read_text())
    collapsed = checks["final_checks"]["collapsed_branches"]
    used = predictions["members_used"].value_counts().rename_axis("members_used")
    report = "\n".join(
        [
            f"# External validation on the demo ({'tiny' if arguments.tiny else 'default'} config)",
            "",
            f"Training table: {arguments.train_patients} patients, {n_train} visits; new table: "
            f"{arguments.patients - arguments.train_patients} patients, {n_new} visits.",
            f"`snakemake --cores {arguments.cores} results/final/bundle`: {final_seconds:.0f} s, "
            "jobs "
            f"{final_jobs}.",
            f"`snakemake --cores {arguments.cores} predict`: {predict_seconds:.0f} s, jobs "
            f"{predict_jobs}.",
            f"Bundle: {folder_size(bundle) / 1e6:.2f} MB in "
            f"{sum(1 for p in bundle.rglob('*') if p.is_file())} files.",
            "Final branches that predict one class for every training row (bundled with "
            f"final.allow_collapsed: true): {collapsed or 'none'}.",
            "",
            used.reset_index(name="rows").to_markdown(index=False),
            "",
            metrics[shown].to_markdown(index=False, floatfmt=".3f"),
            "",
        ]
    )
    (workdir / "external.md").write_text(report)
    print(report)
    targets = ["temporal", "final_models", "predict"]
    later_seconds, _ = snakemake(
        workdir, *targets, config=with_later(config), cores=arguments.cores
    )
    command = f"snakemake --cores {arguments.cores} {' '.join(targets)}"
    section = later_section(workdir, command, later_seconds)
    print(section)
    if not arguments.tiny:
        write("docs/predict.md", "external-later", section)
    print(f"Work folder: {workdir}")


if __name__ == "__main__":
    main()
