"""Image-stage throughput per backbone, against a plain Keras model.fit of the same model.

    python bench/backbones.py           # 128 px, every backbone; written to bench/BACKBONES.md
    python bench/backbones.py --tiny    # 32 px, MobileNetV3Small only (CI keeps it working)

The image stage (``train_branch``: inner patient-grouped early-stopping split, balanced class
weights, the streaming kappa metric, the per-epoch history and best-epoch restore) and a plain
``model.fit`` train the same branch (``backbone_weights: null``) on the same memory-mapped
arrays, with the same batch size, epochs and validation rows, in this one process. The ratio
of their training throughputs (training images per second of wall time, validation passes
included on both sides) is what the stage's machinery costs. Nothing here asserts a time.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ["I", "P", "R"]
COLUMNS = {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": []}
COMPARED = ["EfficientNetB0", "MobileNetV3Small"]
ALSO = ["ResNet50V2", "DenseNet121", "EfficientNetB2"]


def demo_cache(folder: Path, patients: int, size: int):
    """The demo's wound photographs cached at ``size`` px (RGB), with 3 patient-grouped folds."""
    from fusion_dag.cache import build_cache, load_cache
    from fusion_dag.demo import write_demo
    from fusion_dag.folds import assign_folds
    from fusion_dag.prepare import prepare_inputs

    table = folder / "samples.csv"
    write_demo(table, patients=patients, seed=7)
    layout = {"wound_photo": {"column": "wound_photo", "image_dir": folder}}
    samples, views, _ = prepare_inputs(table, COLUMNS, CLASSES, layout, "drop")
    build_cache(views, size, folder / "photo.npy", channels=3)
    views.to_csv(folder / "views.tsv", sep="\t", index=False)
    cache, views = load_cache(folder / "photo.npy", folder / "views.tsv")
    folds = assign_folds(samples[samples["id"].isin(views["id"])], 3, 42, CLASSES)
    return cache, views, folds


def stage_throughput(task, folder: Path) -> float:
    """Training images per second of the image stage's own ``train_branch``."""
    from fusion_dag.image import train_branch

    _, fit = train_branch(task, folder / "c.weights.h5", folder / "h.tsv")
    return fit["fit_images_per_second"]


def plain_throughput(task) -> float:
    """Training images per second of a plain ``model.fit`` on the stage's arrays."""
    import keras

    from fusion_dag.branch import build_image_branch
    from fusion_dag.folds import inner_split

    table = task.rows()
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, task.settings["validation_fraction"], task.seed)
    x, y, _ = task.training_arrays(train[~held_out], None)
    x_stop, y_stop, _ = task.training_arrays(train[held_out], None)
    model = build_image_branch(task.modality, task.images.shape[1:], 3, task.settings)
    model.compile(
        keras.optimizers.Adam(task.settings["learning_rate"]), "sparse_categorical_crossentropy"
    )
    start = time.perf_counter()
    model.fit(
        x,
        y,
        validation_data=(x_stop, y_stop),
        epochs=task.settings["epochs"],
        batch_size=task.settings["batch_size"],
        verbose=0,
    )
    return len(x) * task.settings["epochs"] / (time.perf_counter() - start)


def spread(values: list) -> str:
    """Median with the range of repeated measurements."""
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="32 px, one backbone, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    size, patients, epochs = (32, 30, 1) if args.tiny else (128, 60, 3)
    compared, also = (COMPARED[1:], []) if args.tiny else (COMPARED, ALSO)
    repeats = 1 if args.tiny else args.repeats

    from fusion_dag.branch import configure_tensorflow
    from fusion_dag.image import BranchFold

    runtime = configure_tensorflow(2, 2, 42)
    settings = {
        "epochs": epochs,
        "batch_size": 32,
        "learning_rate": 0.001,
        "patience": epochs + 1,
        "validation_fraction": 0.2,
        "backbone_weights": None,
        "fine_tune": "all",
    }
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cache, positions, folds = demo_cache(folder, patients, size)
        for backbone in compared + also:
            task = BranchFold(
                cache,
                positions,
                folds,
                1,
                "wound_photo",
                CLASSES,
                {**settings, "size": size, "backbone": backbone},
                42,
            )
            stage = [stage_throughput(task, folder) for _ in range(repeats)]
            plain = [plain_throughput(task) for _ in range(repeats)] if backbone in compared else []
            ratio = statistics.median(stage) / statistics.median(plain) if plain else None
            rows.append((backbone, stage, plain, ratio))
            print(backbone, stage, plain, ratio, flush=True)
    lines = [
        "# Image-stage throughput per backbone",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"TensorFlow intra-op threads {runtime['intra_op_threads']}; {size} px RGB, "
        f"{len(cache)} demo photographs ({patients} patients), fold 1's training rows, "
        f"batch 32, {epochs} epochs, backbone_weights null, fine_tune all; median of "
        f"{repeats} runs, min to max in brackets. Throughput: training images per second of "
        "`fit` wall time, the first epoch (function tracing) and validation passes included "
        f"on both sides. `python bench/backbones.py{' --tiny' if args.tiny else ''}`.",
        "",
        "| backbone | image stage, images/s | plain model.fit, images/s | ratio, target >= 0.95 |",
        "|:--|--:|--:|--:|",
    ]
    for backbone, stage, plain, ratio in rows:
        plain_text = spread(plain) if plain else "not measured"
        ratio_text = f"{ratio:.2f}" if ratio else ""
        lines.append(f"| {backbone} | {spread(stage)} | {plain_text} | {ratio_text} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.tiny:
        (REPO / "bench" / "BACKBONES.md").write_text(text)


if __name__ == "__main__":
    main()
