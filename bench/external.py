"""External validation on the demo: final models on the first patients, predict the others.

    python bench/external.py           # 160 demo patients: train on 120, predict 40 (labelled)
    python bench/external.py --tiny    # a quick pass on a tiny config

The demo table is split by patient (sorted ids): the first ``--train-patients`` are the
training table of a normal run (``samples: train.csv``); the rest, with their labels, are the
new table (``predict: {samples: new.csv}``). One ``snakemake predict`` builds the final models
and the bundle, then predicts; the script prints the wall times, the bundle's size, how each
row was scored and the metrics table (results/predict/metrics.tsv), and writes them to
``external.md`` in the work folder.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from run import snakemake  # noqa: E402

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
    print(f"Work folder: {workdir}")


if __name__ == "__main__":
    main()
