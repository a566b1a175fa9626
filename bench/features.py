"""The feature cache at the study's size: a frozen EfficientNetB0, cached against uncached.

    python bench/features.py            # the study-size demo (268 patients), RESULTS.md section
    python bench/features.py --tiny     # 40 patients at 32 px, for CI: the same code path

What it measures, side by side on this machine: the full ``fusion_results`` run with
``feature_cache: true``; the same run's image jobs with ``feature_cache: false`` (one repeat
unless ``--uncached-repeats 2``); the CPU seconds of the image stage from Snakemake's
``benchmark:`` files, the wall time of each run, the peak memory of the features jobs; and the
fold kappas of both, against the noise between two uncached runs that differ only in
TensorFlow's intra-op threads (summation order: the size of difference caching makes).

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

    from fusion_dag.image import BACKBONES

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


HEADING = "## Feature cache: frozen EfficientNetB0 (study)"
MODALITIES = ("thermal_map", "depth_map", "wound_photo")
# --tiny (CI): the thermal branch alone and fused with the metadata.
TINY_COMBINATIONS = [["thermal_map"], ["metadata", "thermal_map"]]
# The setting: every modality's branch a frozen EfficientNetB0 on 128 px RGB.
BACKBONE = {"backbone": "EfficientNetB0", "channels": 3, "size": 128, "fine_tune": "frozen"}
STUDY = {"demo": {"patients": 268, "seed": 11}}
TINY = {
    "demo": {"patients": 40, "seed": 7},
    "cv": {"folds": 3, "repeats": 1, "seed": 42},
    "image_model": {"epochs": 3, "patience": 2, "intra_op_threads": 1},
    "evaluation": {"bootstrap": 200},
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


def measure(root: Path, tiny: bool, uncached_repeats: int) -> dict:
    """Every run of the comparison, in one work folder: the shared prepared inputs, the
    calibrated backbone file, the cached full run, the uncached image jobs and their noise."""
    folds = 3
    base = root / "base"
    base.mkdir(parents=True, exist_ok=True)
    prepare_seconds = timed(base, *cache_targets(tiny), config=run_config(tiny, None))
    weights = calibrated_backbone_file(
        BACKBONE["backbone"], calibration_images(base, tiny), root / "b.weights.h5"
    )
    runs = {}
    for name in ("cached", "uncached", "noise"):
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(base, root / name, symlinks=True)
    cached = run_config(tiny, str(weights))
    runs["cached"] = timed(root / "cached", "fusion_results", config=cached)
    repeats = list(range(1, uncached_repeats + 1))
    uncached = run_config(tiny, str(weights), feature_cache=False)
    targets = [t for r in repeats for t in image_targets(tiny, r, folds)]
    runs["uncached"] = timed(root / "uncached", *targets, config=uncached)
    threads = uncached["image_model"].get("intra_op_threads", 2)
    noise = run_config(tiny, str(weights), feature_cache=False, intra_op_threads=3 - threads)
    runs["noise"] = timed(root / "noise", *image_targets(tiny, 1, folds), config=noise)
    return {
        "prepare_seconds": prepare_seconds,
        "wall": runs,
        "repeats": repeats,
        "cpu": {name: cpu_by_rule(root / name) for name in runs},
        "features": job_records(root / "cached", "features"),
        "image_cpu": {
            name: sum(r[2] for rep in repeats for r in job_records(root / name, "image", rep))
            for name in ("cached", "uncached")
        },
        "kappas": {
            name: {
                r: fold_kappas(root / name, tiny, r, folds)
                for r in (repeats if name != "noise" else [1])
            }
            for name in runs
        },
        "threads": (threads, 3 - threads),
    }


def report(measured: dict, command: str, tiny: bool) -> str:
    """The RESULTS.md section: costs side by side, fold kappas, what dominates each run."""
    repeats = measured["repeats"]
    features_cpu = sum(r[2] for r in measured["features"])
    cached_cpu = measured["image_cpu"]["cached"] + features_cpu
    uncached_cpu = measured["image_cpu"]["uncached"]
    ratio = uncached_cpu / cached_cpu
    wall = measured["wall"]
    full = measured["prepare_seconds"] + wall["cached"]
    cost_rows = [
        (
            f"image stage, repeat{'s' if len(repeats) > 1 else ''} {', '.join(map(str, repeats))}"
            " (CPU s)",
            f"{uncached_cpu:.0f}",
            f"{measured['image_cpu']['cached']:.0f} + {features_cpu:.0f} (features jobs)",
            f"{ratio:.1f}x cheaper (target >= 20x)",
        ),
        (
            "full fusion_results run, demo data and image caches included (wall s)",
            "not run (see below)",
            f"{full:.0f} ({full / 60:.1f} min)",
            "target < 15 min" + (" (met)" if full < 900 else " (missed)"),
        ),
        (
            "peak memory of the features jobs (RSS, largest)",
            "",
            f"{max(r[3] for r in measured['features']):.0f} MB",
            "",
        ),
    ]
    kappa_rows = []
    differences, noise = [], []
    for (modality, fold), (uncached_kappa, uncached_epochs) in measured["kappas"]["uncached"][
        1
    ].items():
        cached_kappa, cached_epochs = measured["kappas"]["cached"][1][(modality, fold)]
        noise_kappa, _ = measured["kappas"]["noise"][1][(modality, fold)]
        differences.append(cached_kappa - uncached_kappa)
        noise.append(noise_kappa - uncached_kappa)
        kappa_rows.append(
            (
                modality,
                fold,
                f"{uncached_kappa:.3f} ({uncached_epochs})",
                f"{noise_kappa:.3f}",
                f"{cached_kappa:.3f} ({cached_epochs})",
                f"{cached_kappa - uncached_kappa:+.3f}",
                f"{noise_kappa - uncached_kappa:+.3f}",
            )
        )
    threads, other = measured["threads"]
    dominance = []
    for name in ("cached", "uncached"):
        cpu = measured["cpu"][name]
        total = sum(seconds for _, seconds in cpu.values())
        top = sorted(cpu.items(), key=lambda item: -item[1][1])[:4]
        shares = ", ".join(
            f"{rule} {seconds:.0f} s ({100 * seconds / total:.0f} %, {jobs} jobs)"
            for rule, (jobs, seconds) in top
        )
        dominance.append(f"- {name}: {total:.0f} CPU s in all; {shares}")
    rms = lambda values: float(np.sqrt(np.mean(np.square(values))))  # noqa: E731
    lines = [
        HEADING + (" (tiny)" if tiny else ""),
        "",
        f"`{command}` on {machine()}: the demo generator at "
        f"{STUDY['demo']['patients'] if not tiny else TINY['demo']['patients']} patients, the "
        f"default config's six combinations and three modalities, each branch a frozen "
        f"EfficientNetB0 at {run_config(tiny, None)['image_model']['size']} px RGB whose weights "
        "are a local file the bench writes (an initialised backbone, BatchNorm statistics "
        "calibrated on 64 views per modality: no download), 3 folds x 2 repeats, `--cores 2`. "
        "Cached: `feature_cache: true` (the default); uncached: `feature_cache: false`, whose "
        f"image jobs were run for repeat {', '.join(map(str, repeats))} only (18 uncached jobs "
        "would take most of the session); CPU seconds from Snakemake's `benchmark:` files.",
        "",
        markdown_table(["measurement", "uncached", "cached", "ratio"], cost_rows, right=(1, 2)),
        "",
        "Validation kappa of each image job of repeat 1 (epochs trained in brackets). Noise: the "
        f"uncached job again with TensorFlow intra-op threads {other} instead of {threads}, "
        "which changes only floating-point summation order:",
        "",
        markdown_table(
            [
                "modality",
                "fold",
                "uncached",
                "uncached, other threads",
                "cached",
                "cached - uncached",
                "noise",
            ],
            kappa_rows,
            right=(1, 2, 3, 4, 5, 6),
        ),
        "",
        f"Root mean square of the differences over the {len(differences)} jobs: cached - uncached "
        f"{rms(differences):.3f}, noise {rms(noise):.3f}; mean cached - uncached "
        f"{statistics.mean(differences):+.3f}.",
        "",
        "What dominates each run (CPU seconds by rule):",
        "",
        *dominance,
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
