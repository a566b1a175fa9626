"""The small CNN's first plateau on faint thermal views: today's training against the new one.

    python bench/plateau.py           # the study's size (270 patients), 3 folds, RESULTS.md section
    python bench/plateau.py --tiny    # 40 patients at 24 px, a few epochs: the same code path

The demo's ``faint`` thermal variant (``write_demo(..., thermal_signal="faint")``) is the
original study's layout: only the wound core is about 1 degree C warmer or cooler by class,
under a per-view offset of about that size. On the demo's thermal crops (the demo's
``thermal_map`` settings from config/config.yaml, one intra-op thread), for each of the 3
patient-grouped folds (:func:`fusion_dag.folds.assign_folds`, cv.seed 42), the script reports:

* the transparent baseline: per-channel means of the crop's core, rim and surround and the
  core's per-channel spread, averaged over a visit's views, in a balanced logistic regression
  trained on the fold's training visits (:func:`crop_statistics`);
* the small CNN branch trained as the image stage trains it (:func:`fusion_dag.image.
  train_branch`), under each set of settings in :data:`SETTINGS` (``old``: the training before
  the plateau fix, the new keys at their old values; ``new``: the config's defaults): its best
  epoch, epochs trained, the training and validation visits' kappa of its visit probabilities,
  how many classes it predicts for the training visits, whether it left the plateau, and its
  wall time.

A fold's branch has left its first plateau when its best epoch is after the warm-up
(``warmup_epochs``, or epoch 1), its training kappa is above 0.1 and it predicts more than one
class for the training visits. The target: every fold leaves it and its validation kappa is at
least 0.8 x the baseline's on the same fold.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from run import machine, markdown_table, write_section  # noqa: E402

CLASSES = ["I", "P", "R"]
COLUMNS = {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": []}
STUDY = {"patients": 270, "seed": 7}
TINY = {"patients": 40, "seed": 7}
TINY_SETTINGS = {"size": 24, "epochs": 4, "patience": 2, "warmup_epochs": 2}
# The training before the plateau fix: the new image_model keys at their old values.
OLD = {
    "batch_norm": False,
    "standardize": False,
    "reduce_lr_patience": 0,
    "warmup_epochs": 0,
    "pooling": "average",
}
CV_SEED = 42
FOLDS = 3
TARGET = 0.8


def demo_settings(threads: int) -> dict:
    """The demo's thermal_map settings (image_model with its overrides) from the config."""
    from fusion_dag.config import modality_settings

    with open(REPO / "config" / "config.yaml") as handle:
        config = yaml.safe_load(handle)
    return {**modality_settings(config, "thermal_map"), "intra_op_threads": threads}


def faint_views(folder: Path, patients: int, seed: int, size: int):
    """Write the faint demo into ``folder``, crop and cache its thermal views at ``size`` px
    (3 channels, box margin 0.25 as the demo); return (images, views, folds)."""
    from fusion_dag.cache import build_cache, load_cache
    from fusion_dag.demo import THERMAL_TABLE, write_demo
    from fusion_dag.folds import assign_folds
    from fusion_dag.prepare import prepare_inputs
    from fusion_dag.views import BOX, VIEW_COLUMNS, with_crops

    table = folder / "samples.csv"
    if not table.exists():  # a kept --workdir reuses its demo
        write_demo(table, patients=patients, seed=seed, thermal_signal="faint")
    layout = {
        "images": str(folder / THERMAL_TABLE),
        "path": "file",
        "keys": ["patient_id", "visit_number"],
        "box": list(BOX),
        "box_margin": 0.25,
        "image_dir": folder,
    }
    samples, views, _ = prepare_inputs(table, COLUMNS, CLASSES, {"thermal_map": layout}, "drop")
    views = with_crops(views[list(VIEW_COLUMNS)], 0.25)
    cache, listing = folder / f"thermal_map_{size}.npy", folder / f"views_{size}.tsv"
    if not cache.exists():
        build_cache(views, size, cache, channels=3)
        views.to_csv(listing, sep="\t", index=False)
    images, views = load_cache(cache, listing)
    return images, views, assign_folds(samples, FOLDS, CV_SEED, CLASSES)


def crop_statistics(images: np.ndarray) -> np.ndarray:
    """Per view: the per-channel means of the crop's core (within 0.3 of the half-width of
    the centre), rim (0.4 to 0.65) and surround (beyond 0.75), and the core's per-channel
    standard deviation, on pixels scaled to 0-1 (n, 4 x channels)."""
    size = images.shape[1]
    y, x = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    distance = np.hypot(x - centre, y - centre) / (size / 2)
    regions = {
        "core": distance <= 0.3,
        "rim": (distance >= 0.4) & (distance <= 0.65),
        "surround": distance >= 0.75,
    }
    pixels = np.asarray(images, dtype=np.float32) / 255.0
    columns = [pixels[:, mask].mean(axis=1) for mask in regions.values()]
    columns.append(pixels[:, regions["core"]].std(axis=1))
    return np.concatenate(columns, axis=1)


def baseline_kappa(images, views, folds, fold: int) -> dict:
    """The transparent baseline on one fold: crop statistics averaged over each visit's views,
    standardised, in a balanced logistic regression; the kappa of its validation visits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fusion_dag.image import image_rows

    statistics = pd.DataFrame(crop_statistics(images)).assign(id=views["id"].to_numpy())
    visits = statistics.groupby("id").mean()
    rows = image_rows(folds, views, fold).set_index("id")
    x, y = visits.loc[rows.index].to_numpy(), rows["label"].to_numpy()
    train = (rows["split"] == "train").to_numpy()
    model = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)
    )
    model.fit(x[train], y[train])
    predicted = model.predict(x)
    return {
        "train_kappa": float(cohen_kappa_score(y[train], predicted[train], labels=CLASSES)),
        "val_kappa": float(cohen_kappa_score(y[~train], predicted[~train], labels=CLASSES)),
    }


def branch_figures(data, fold: int, settings: dict, folder: Path) -> dict:
    """Train the branch on one fold as the image stage does; its epochs, kappas and time."""
    from sklearn.metrics import cohen_kappa_score

    from fusion_dag.artifacts import prob_columns
    from fusion_dag.branch import configure_tensorflow
    from fusion_dag.image import BranchFold, branch_probabilities, train_branch

    images, views, folds = data
    configure_tensorflow(settings["intra_op_threads"], 1, CV_SEED)
    task = BranchFold(images, views, folds, fold, "thermal_map", CLASSES, settings, CV_SEED)
    started = time.perf_counter()
    model, fit = train_branch(task, folder / "checkpoint.weights.h5", folder / "history.tsv")
    probs, _ = branch_probabilities(model, task)
    seconds = time.perf_counter() - started
    predicted = np.asarray(CLASSES)[probs[prob_columns(CLASSES)].to_numpy().argmax(axis=1)]
    labels = task.rows().set_index("id").loc[probs["id"], "label"].to_numpy()
    train = (probs["split"] == "train").to_numpy()
    warmup = settings.get("warmup_epochs", 0)
    figures = {
        "best_epoch": fit["best_epoch"],
        "epochs": sum(p["epochs"] for p in fit["phases"]),
        "train_kappa": float(cohen_kappa_score(labels[train], predicted[train], labels=CLASSES)),
        "val_kappa": float(cohen_kappa_score(labels[~train], predicted[~train], labels=CLASSES)),
        "train_classes": len(np.unique(predicted[train])),
        "seconds": seconds,
    }
    figures["left_plateau"] = (
        figures["best_epoch"] > max(warmup, 1)
        and figures["train_kappa"] > 0.1
        and figures["train_classes"] > 1
    )
    return figures


def measure(data, settings: dict, workdir: Path, folds: list) -> list:
    """Per fold: the baseline and each settings' branch figures."""
    rows = []
    for fold in folds:
        row = {"fold": fold, "baseline": baseline_kappa(*data, fold)}
        print(f"fold {fold}: baseline kappa {row['baseline']['val_kappa']:.3f}", flush=True)
        for name, values in settings.items():
            folder = workdir / f"{name}_fold{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            row[name] = branch_figures(data, fold, values, folder)
            print(f"fold {fold}, {name}: {row[name]}", flush=True)
        rows.append(row)
    return rows


def report(rows: list, settings: dict, tiny: bool, data, seconds: float) -> str:
    """The RESULTS.md section."""
    images, views, folds = data
    table = []
    for row in rows:
        cells = [str(row["fold"]), f"{row['baseline']['val_kappa']:.3f}"]
        for name in settings:
            figures = row[name]
            ratio = figures["val_kappa"] / row["baseline"]["val_kappa"]
            cells += [
                f"{figures['best_epoch']} / {figures['epochs']}",
                f"{figures['train_kappa']:.3f}",
                f"{figures['val_kappa']:.3f} ({ratio:.2f})",
                "yes" if figures["left_plateau"] else "**no**",
                f"{figures['seconds']:.0f}",
            ]
        table.append(cells)
    mean = {name: np.mean([r[name]["val_kappa"] for r in rows]) for name in settings}
    baseline = np.mean([r["baseline"]["val_kappa"] for r in rows])
    times = {name: sum(r[name]["seconds"] for r in rows) for name in settings}
    headings = ["fold", "baseline"]
    for name in settings:
        headings += [
            f"{name}: best / epochs",
            f"{name}: train",
            f"{name}: val (x baseline)",
            f"{name}: left",
            f"{name}: s",
        ]
    met = all(
        r["new"]["left_plateau"] and r["new"]["val_kappa"] >= TARGET * r["baseline"]["val_kappa"]
        for r in rows
    )
    size = f"{TINY['patients'] if tiny else STUDY['patients']} patients"
    new = {k: settings["new"][k] for k in OLD}
    return "\n".join(
        [
            "## Plateau: faint thermal views",
            "",
            f"`python bench/plateau.py{' --tiny' if tiny else ''}` on {machine()}: the faint "
            f"thermal demo ({size}, {views['id'].nunique()} visits with {len(views)} boxed "
            f"views, crops at {images.shape[1]} px), the demo's thermal_map settings (patience "
            f"{settings['new']['patience']}, batch {settings['new']['batch_size']}, one intra-op "
            f"thread), 3 patient-grouped folds; {seconds:.0f} s in all. Kappa of the visits "
            "(unweighted); baseline: a balanced logistic regression on per-channel crop "
            "statistics averaged per visit. old: "
            + ", ".join(f"{k} {v}" for k, v in OLD.items())
            + "; new (the defaults): "
            + ", ".join(f"{k} {v}" for k, v in new.items())
            + ".",
            "",
            markdown_table(
                headings,
                table,
                right={h for h in headings if not h.endswith("left")},
            ),
            "",
            f"Mean validation kappa: baseline {baseline:.3f}, "
            + ", ".join(
                f"{name} {mean[name]:.3f} ({mean[name] / baseline:.2f} x baseline)"
                for name in settings
            )
            + "; branch training time "
            + ", ".join(f"{name} {times[name]:.0f} s" for name in settings)
            + f" (new / old {times['new'] / times['old']:.2f}). Target (every fold leaves the "
            f"plateau at >= {TARGET} x the baseline's kappa): {'met' if met else 'missed'}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass at a tiny size")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-op threads")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(1, FOLDS + 1)))
    parser.add_argument(
        "--only", choices=["old", "new"], default=None, help="train one set of settings"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override a new setting (YAML value), for exploring candidates",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here")
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-plateau-"))
    workdir.mkdir(parents=True, exist_ok=True)
    new = demo_settings(arguments.threads)
    if arguments.tiny:
        new |= TINY_SETTINGS
    for item in arguments.set:
        key, value = item.split("=", 1)
        new[key] = yaml.safe_load(value)
    settings = {"old": {**new, **OLD}, "new": new}
    if arguments.only:
        settings = {arguments.only: settings[arguments.only]}
    demo = TINY if arguments.tiny else STUDY
    started = time.perf_counter()
    data = faint_views(workdir / "demo", demo["patients"], demo["seed"], new["size"])
    print(f"faint demo: {len(data[1])} views of {data[1]['id'].nunique()} visits", flush=True)
    rows = measure(data, settings, workdir, arguments.folds)
    seconds = time.perf_counter() - started
    if set(settings) != {"old", "new"}:
        return
    section = report(rows, settings, arguments.tiny, data, seconds)
    print(section)
    complete = not arguments.set and arguments.folds == list(range(1, FOLDS + 1))
    if not arguments.tiny and complete:
        write_section("## Plateau: faint thermal views", section)
    print(f"Work folder: {workdir}")


if __name__ == "__main__":
    main()
