"""The feature cache at the study's size: a frozen EfficientNetB0, cached against uncached.

    python bench/features.py            # the study-size demo (268 patients), RESULTS.md section
    python bench/features.py --tiny     # 40 patients at 32 px, for CI: the same code path

What it measures, side by side on this machine: the full ``fusion_results`` run with
``feature_cache: true``; the same run's image jobs with ``feature_cache: false`` (one repeat
unless ``--uncached-repeats 2``); the CPU seconds of the image stage from Snakemake's
``benchmark:`` files, the wall time of each run, the peak memory of the features jobs; and the
fold kappas of both, against the noise between two uncached runs that differ only in the
training seed (:func:`seed_noise`).

The backbone's weights: no pretrained weights are downloaded. The bench writes a local
``.weights.h5`` from an initialised EfficientNetB0 whose BatchNormalization statistics are
calibrated on the demo's images (:func:`calibrated_backbone_file`): a random backbone in
inference mode shrinks its activations layer by layer (pooled features of about 1e-6 for
EfficientNetB0, 1e-11 for MobileNetV3Small), features no head can learn from; calibrated, it is
a fixed random-feature extractor at the images' scale, a stand-in for ImageNet weights.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from run import machine, markdown_table, replace_section, snakemake  # noqa: E402


def calibrated_backbone_file(name: str, images: np.ndarray, path, seed: int = 0):
    """Write a seeded, randomly initialised ``keras.applications`` backbone ``name`` (input
    ``images.shape[1:]``, 3 channels), its BatchNormalization moving statistics set from one
    training-mode pass over ``images`` (uint8), as a Keras ``.weights.h5`` file at ``path``."""
    import keras
    from keras import layers

    from fusion_dag.backbones import BACKBONES

    keras.utils.set_random_seed(seed)
    backbone = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=images.shape[1:]
    )
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.0  # the moving statistics become this pass's batch statistics
    preprocess = getattr(keras.applications, BACKBONES[name]).preprocess_input
    backbone(preprocess(np.asarray(images, dtype="float32")), training=True)
    backbone.save_weights(str(path))
    return path


HEADING = "## Feature cache: frozen EfficientNetB0"
MODALITIES = ("thermal_map", "depth_map", "wound_photo")
# --tiny (CI): the thermal branch alone and fused with the metadata.
TINY_COMBINATIONS = [["thermal_map"], ["metadata", "thermal_map"]]
# The training seed of the noise runs (cv.seed is 42).
NOISE_SEED = 1042
# The setting: every modality's branch a frozen EfficientNetB0 on 128 px RGB.
BACKBONE = {"backbone": "EfficientNetB0", "channels": 3, "size": 128, "fine_tune": "frozen"}
STUDY = {"demo": {"patients": 268}}
TINY = {
    "demo": {"patients": 40, "seed": 7},
    "cv": {"folds": 3, "repeats": 1, "seed": 42},
    "image_model": {"epochs": 3, "patience": 2, "warmup_epochs": 1, "intra_op_threads": 1},
    # metadata alone is not run: the fusion is the primary (no primary contrast).
    "evaluation": {"bootstrap": 200, "primary": "metadata+thermal_map"},
    "combinations": TINY_COMBINATIONS,
}


def run_config(tiny: bool, weights, **image_model) -> dict:
    """The bench's config: the study-size demo (or TINY) with every branch the frozen backbone
    at the bench's size (the demo's thermal crops have a size of their own, overridden)."""
    base = json.loads(json.dumps(TINY if tiny else STUDY))
    size = 32 if tiny else BACKBONE["size"]
    base["image_model"] = {
        **base.get("image_model", {}),
        **BACKBONE,
        "size": size,
        "backbone_weights": weights,
        **image_model,
    }
    base["modalities"] = {"thermal_map": {"size": size}}
    return base


def modalities(tiny: bool) -> tuple:
    """The modalities the bench trains."""
    return ("thermal_map",) if tiny else MODALITIES


def cache_targets(tiny: bool) -> list:
    return [f"results/prepared/images/{m}.npy" for m in modalities(tiny)]


def image_targets(tiny: bool, repeat: int, folds: int) -> list:
    return [
        f"results/image/{m}/repeat{repeat}/fold{k}/metrics.json"
        for m in modalities(tiny)
        for k in range(1, folds + 1)
    ]


def calibration_images(workdir: Path, tiny: bool) -> np.ndarray:
    """The first views of each modality's image cache, for the BatchNorm calibration."""
    per_modality = 16 if tiny else 64
    caches = [np.load(workdir / target, mmap_mode="r") for target in cache_targets(tiny)]
    return np.concatenate([np.asarray(cache[:per_modality]) for cache in caches])


def job_records(workdir: Path, rule: str, repeat: int | None = None) -> list:
    """(job path, wall s, CPU s, peak RSS MB) of each job of ``rule`` from Snakemake's
    ``benchmark:`` files; ``repeat`` keeps one repeat's jobs only."""
    import pandas as pd

    records = []
    folder = workdir / "benchmarks" / rule
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        name = str(path.relative_to(folder))
        if repeat is not None and f"repeat{repeat}/" not in name:
            continue
        row = pd.read_csv(path, sep="\t").iloc[0]
        records.append((name, float(row["s"]), float(row["cpu_time"]), float(row["max_rss"])))
    return records


def cpu_by_rule(workdir: Path) -> dict:
    """Rule -> (jobs, CPU seconds summed over its jobs) of every job a run recorded."""
    rules = sorted(p.name for p in (workdir / "benchmarks").iterdir() if p.is_dir())
    totals = {}
    for rule in rules:
        records = job_records(workdir, rule)
        totals[rule] = (len(records), sum(r[2] for r in records))
    return totals


def fold_kappas(workdir: Path, tiny: bool, repeat: int, folds: int) -> dict:
    """(modality, fold) -> (validation kappa, epochs trained) of one repeat's image jobs."""
    kappas = {}
    for modality in modalities(tiny):
        for fold in range(1, folds + 1):
            stage = workdir / f"results/image/{modality}/repeat{repeat}/fold{fold}"
            metrics = json.loads((stage / "metrics.json").read_text())
            epochs = len((stage / "history.tsv").read_text().splitlines()) - 1
            kappas[(modality, fold)] = (metrics["kappa"], epochs)
    return kappas


def timed(workdir: Path, *targets: str, config: dict) -> float:
    """Wall seconds of a Snakemake run of ``targets``."""
    return snakemake(workdir, *targets, config=config)[0]


def seed_noise(workdir: Path, tiny: bool, seed: int, folds: int) -> dict:
    """:func:`fold_kappas` of repeat 1's uncached image jobs trained again, in this process,
    with training seed ``seed`` instead of cv.seed: another inner early-stopping split,
    initial head weights, order of the views and flips; the outer partition, the images and
    every setting unchanged. Its difference from the uncached jobs is the training noise the
    cached run is judged against (a cached head draws its order and flips from a generator of
    its own, so it cannot follow the uncached run's draws)."""
    from fusion_dag.artifacts import read_tsv
    from fusion_dag.cache import load_cache
    from fusion_dag.config import modality_settings
    from fusion_dag.evaluate import fold_metrics
    from fusion_dag.image import BranchFold, train_stage

    config = json.loads((workdir / "results/provenance.json").read_text())["config"]
    folds_table = read_tsv(workdir / "results/folds/repeat1.tsv")
    kappas = {}
    for modality in modalities(tiny):
        settings = {**modality_settings(config, modality), "feature_cache": False}
        images, views = load_cache(
            workdir / f"results/prepared/images/{modality}.npy",
            workdir / f"results/prepared/{modality}_views.tsv",
        )
        for fold in range(1, folds + 1):
            task = BranchFold(
                images, views, folds_table, fold, modality, config["classes"], settings, seed
            )
            folder = workdir / f"noise/{modality}/fold{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            _, probs, _, record = train_stage(
                task, folder / "checkpoint.weights.h5", folder / "history.tsv", 2, f"fold {fold}"
            )
            epochs = sum(phase["epochs"] for phase in record["phases"])
            kappa = fold_metrics(probs, folds_table, task.classes)["kappa"]
            kappas[(modality, fold)] = (kappa, epochs)
    return kappas


def measure(root: Path, tiny: bool, uncached_repeats: int) -> dict:
    """Every run of the comparison, in one work folder: the shared prepared inputs, the
    calibrated backbone file, the cached full run, the uncached image jobs and their noise."""
    folds = 3
    base = root / "base"
    base.mkdir(parents=True, exist_ok=True)
    prepare_seconds = timed(base, *cache_targets(tiny), config=run_config(tiny, None))
    weights = str(
        calibrated_backbone_file(
            BACKBONE["backbone"], calibration_images(base, tiny), root / "b.weights.h5"
        )
    )
    wall = {}
    for name in ("cached", "uncached"):
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(base, root / name, symlinks=True)
    wall["cached"] = timed(root / "cached", "fusion_results", config=run_config(tiny, weights))
    repeats = list(range(1, uncached_repeats + 1))
    uncached = run_config(tiny, weights, feature_cache=False)
    targets = [t for r in repeats for t in image_targets(tiny, r, folds)]
    wall["uncached"] = timed(root / "uncached", *targets, config=uncached)
    started = time.perf_counter()
    noise = seed_noise(root / "cached", tiny, NOISE_SEED, folds)
    wall["noise"] = time.perf_counter() - started
    return {
        "prepare_seconds": prepare_seconds,
        "wall": wall,
        "repeats": repeats,
        "cpu": {name: cpu_by_rule(root / name) for name in ("cached", "uncached")},
        "features": job_records(root / "cached", "features"),
        "image": {
            name: [r for rep in repeats for r in job_records(root / name, "image", rep)]
            for name in ("cached", "uncached")
        },
        "kappas": {
            "cached": fold_kappas(root / "cached", tiny, 1, folds),
            "uncached": fold_kappas(root / "uncached", tiny, 1, folds),
            "noise": noise,
        },
    }


def dominance(cpu: dict) -> str:
    """A run's CPU seconds in all and its four largest rules."""
    total = sum(seconds for _, seconds in cpu.values())
    top = sorted(cpu.items(), key=lambda item: -item[1][1])[:4]
    shares = ", ".join(
        f"{rule} {seconds:.0f} s ({100 * seconds / total:.0f} %, {jobs} jobs)"
        for rule, (jobs, seconds) in top
    )
    return f"{total:.0f} CPU s in all; {shares}"


def rms(values: list) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def report(measured: dict, command: str, tiny: bool) -> str:
    """The RESULTS.md section: costs side by side, fold kappas, what dominates each run."""
    repeats = ", ".join(map(str, measured["repeats"]))
    image = {name: sum(r[2] for r in records) for name, records in measured["image"].items()}
    image_wall = {name: sum(r[1] for r in records) for name, records in measured["image"].items()}
    features_cpu = sum(r[2] for r in measured["features"])
    features_wall = sum(r[1] for r in measured["features"])
    ratio = image["uncached"] / (image["cached"] + features_cpu)
    full = measured["prepare_seconds"] + measured["wall"]["cached"]
    config = run_config(tiny, None)
    cost_rows = [
        (
            f"image stage, repeat {repeats}: CPU s (image jobs + features jobs)",
            f"{image['uncached']:.0f}",
            f"{image['cached'] + features_cpu:.0f} ({image['cached']:.0f} + {features_cpu:.0f})",
            f"{ratio:.1f}x cheaper (target >= 20x)",
        ),
        (
            f"image stage, repeat {repeats}: wall s of its jobs, summed",
            f"{image_wall['uncached']:.0f}",
            f"{image_wall['cached'] + features_wall:.0f}",
            f"{image_wall['uncached'] / (image_wall['cached'] + features_wall):.1f}x",
        ),
        (
            "full fusion_results run, demo data and image caches included: wall",
            "",
            f"{full:.0f} s ({full / 60:.1f} min)",
            "target < 15 min: " + ("met" if full < 900 else "missed"),
        ),
        (
            "features jobs: peak memory (RSS, largest), wall s each",
            "",
            f"{max(r[3] for r in measured['features']):.0f} MB; "
            + ", ".join(f"{r[0][:-4]} {r[1]:.0f} s" for r in measured["features"]),
            "",
        ),
    ]
    kappa_rows, differences, noise = [], [], []
    for key, (uncached, uncached_epochs) in measured["kappas"]["uncached"].items():
        cached, cached_epochs = measured["kappas"]["cached"][key]
        other, other_epochs = measured["kappas"]["noise"][key]
        differences.append(cached - uncached)
        noise.append(other - uncached)
        kappa_rows.append(
            (
                *key,
                f"{uncached:.3f} ({uncached_epochs})",
                f"{other:.3f} ({other_epochs})",
                f"{cached:.3f} ({cached_epochs})",
                f"{cached - uncached:+.3f}",
                f"{other - uncached:+.3f}",
            )
        )
    cv = STUDY if not tiny else TINY
    patients = cv["demo"]["patients"]
    lines = [
        HEADING + (" (tiny)" if tiny else ", study size"),
        "",
        f"`{command}` on {machine()}: the demo generator at {patients} patients, "
        + (
            "the thermal branch alone and with the metadata"
            if tiny
            else "the default config's six combinations and three modalities"
        )
        + f", each branch a frozen EfficientNetB0 at {config['image_model']['size']} px RGB "
        "whose weights are a local file the bench writes (an initialised backbone, BatchNorm "
        "statistics calibrated on the first views of each modality: no download), "
        f"{'3 folds x 1 repeat' if tiny else '3 folds x 2 repeats'}, `--cores 2`. Cached: "
        "`feature_cache: true` (the default), the full run; uncached: `feature_cache: false`, "
        f"its image jobs of repeat {repeats} only ({measured['wall']['uncached']:.0f} s wall; the "
        "rest of the run is the same jobs as the cached run's). CPU and wall seconds of each job "
        "from Snakemake's `benchmark:` files.",
        "",
        markdown_table(["measurement", "uncached", "cached", "ratio"], cost_rows, right=(1, 2)),
        "",
        "Validation kappa of each image job of repeat 1 (epochs trained in brackets). Noise: the "
        f"uncached job trained again with another training seed ({NOISE_SEED} for 42: another "
        "inner early-stopping split, initial head weights, order of views and flips; the same "
        "partition, images and settings):",
        "",
        markdown_table(
            [
                "modality",
                "fold",
                "uncached",
                "uncached, seed " + str(NOISE_SEED),
                "cached",
                "cached - uncached",
                "noise",
            ],
            kappa_rows,
            right=(1, 2, 3, 4, 5, 6),
        ),
        "",
        f"Over the {len(differences)} jobs: root mean square of cached - uncached "
        f"{rms(differences):.3f} (mean {statistics.mean(differences):+.3f}), of the noise "
        f"{rms(noise):.3f} (mean {statistics.mean(noise):+.3f}).",
        "",
        "What dominates each run (CPU seconds by rule, Snakemake's `benchmark:` files):",
        "",
        f"- cached, the full run: {dominance(measured['cpu']['cached'])}",
        f"- uncached, repeat {repeats}'s image jobs: {dominance(measured['cpu']['uncached'])}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="40 patients at 32 px, for CI")
    parser.add_argument("--uncached-repeats", type=int, default=1, choices=(1, 2))
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-features-"))
    command = "python bench/features.py" + " --tiny" * args.tiny
    command += f" --uncached-repeats {args.uncached_repeats}" * (args.uncached_repeats != 1)
    started = time.perf_counter()
    section = report(measure(root, args.tiny, args.uncached_repeats), command, args.tiny)
    print(section)
    print(f"bench wall time {time.perf_counter() - started:.0f} s; runs kept in {root}")
    if not args.tiny:
        results = REPO / "bench/RESULTS.md"
        results.write_text(replace_section(results.read_text(), HEADING, section))


if __name__ == "__main__":
    main()
