"""Wound-box crops against whole frames for the demo's thermal views, in one run.

    python bench/crops.py           # the demo (160 patients), default settings, 3 folds x 2 repeats
    python bench/crops.py --tiny    # a quick pass on a tiny config (40 patients, 24 px, 3 epochs)

One run trains two modalities on the same image table: ``thermal_map`` (each view its wound
box's square crop, the demo default) and ``thermal_frame`` (``box: null``: each view its whole
320 x 240 frame shrunk to the branch's size), on the same folds and seeds. The script prints
and writes (``bench/RESULTS.md``, section "Crops vs whole frames"; not for ``--tiny``) each
one's kappa, the paired difference (the mean per-fold difference with the corrected resampled
t interval and p-value, K - 1 degrees of freedom; the paired patient bootstrap for reference)
and the spread of the per-fold differences: the fold noise the difference is judged against.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from run import machine, markdown_table, snakemake, write_section  # noqa: E402

TINY = {
    "demo": {"patients": 40, "seed": 7},
    "cv": {"folds": 3, "repeats": 1, "seed": 42},
    "image_model": {
        "size": 24,
        "epochs": 3,
        "patience": 2,
        "warmup_epochs": 1,
        "intra_op_threads": 1,
    },
    "evaluation": {"bootstrap": 200},
}
# The demo's thermal table as a second modality whose views are the whole frames.
FRAMES = {
    "thermal_frame": {
        "images": "resources/demo/thermal_images.csv",
        "path": "file",
        "keys": ["patient_id", "visit_number"],
        "box": None,
        # Every setting of the demo's thermal_map but the box: the same branch, size and
        # training, so the views are the only difference.
        "channels": 3,
        "size": 48,
        "patience": 5,
        "batch_size": 64,
    }
}
COMBINATIONS = [["thermal_map"], ["thermal_frame"]]


def tiny_sizes(modalities: dict) -> dict:
    """Both thermal modalities at the tiny size (their own size would override image_model's)."""
    size = TINY["image_model"]["size"]
    return {
        "thermal_map": {"size": size},
        **{name: {**entry, "size": size} for name, entry in modalities.items()},
    }


def crops_against_frames(workdir: Path, tiny: bool, cores: int) -> dict:
    """Run both modalities in one workflow run; return the comparison's figures."""
    from fusion_dag.artifacts import read_tsv
    from fusion_dag.inference import compare, fold_kappa_differences, paired_rows

    config = {**(TINY if tiny else {}), "modalities": FRAMES, "combinations": COMBINATIONS}
    if tiny:
        config["modalities"] = tiny_sizes(FRAMES)
    seconds, jobs = snakemake(workdir, "fusion_results", config=config, cores=cores)
    classes = ["I", "P", "R"]
    crops, frames = (
        read_tsv(workdir / f"results/fusion/{m}/oof.tsv") for m in ("thermal_map", "thermal_frame")
    )
    evaluation = {"bootstrap": 200 if tiny else 2000, "confidence": 0.95}
    result = compare(crops, frames, classes, evaluation, 42)
    differences = fold_kappa_differences(*paired_rows(crops, frames), classes)
    headline = read_tsv(workdir / "results/fusion_results.tsv").set_index("combination")
    return {
        "seconds": seconds,
        "jobs": jobs,
        "crops": headline.loc["thermal_map"],
        "frames": headline.loc["thermal_frame"],
        "comparison": result,
        "fold_differences": differences,
    }


def report(figures: dict, tiny: bool) -> str:
    """The RESULTS.md section."""
    rows = []
    for name, row in (
        ("crops (box, margin 0.25)", figures["crops"]),
        ("whole frames (box: null)", figures["frames"]),
    ):
        rows.append(
            [
                name,
                str(int(row["n_rows"])),
                f"{row['kappa_mean']:.3f} [{row['kappa_ci_low']:.3f}, {row['kappa_ci_high']:.3f}]",
                f"{row['kappa_std']:.3f}",
                f"{row['qwk_mean']:.3f}",
                f"{row['balanced_accuracy_mean']:.3f}",
            ]
        )
    comparison, differences = figures["comparison"], figures["fold_differences"]
    config = (
        "tiny config (40 patients, 24 px, 3 epochs, 1 repeat)"
        if tiny
        else "default demo config (160 patients, 64 px, 3 folds x 2 repeats)"
    )
    return "\n".join(
        [
            "## Crops vs whole frames",
            "",
            f"`python bench/crops.py{' --tiny' if tiny else ''}` on {machine()}: {config}, one "
            f"run with both thermal modalities ({figures['seconds']:.0f} s, "
            f"{sum(figures['jobs'].values())} jobs).",
            "",
            markdown_table(
                ["views", "n_visits", "kappa (95% CI)", "kappa_std", "qwk", "balanced_acc"],
                rows,
                right={"n_visits", "kappa_std", "qwk", "balanced_acc"},
            ),
            "",
            f"Crops minus frames: kappa {comparison['kappa_diff_folds']:+.3f} "
            f"[{comparison['kappa_diff_ci_low']:+.3f}, {comparison['kappa_diff_ci_high']:+.3f}] "
            f"(mean per-fold difference, corrected resampled t interval), t = "
            f"{comparison['t_corrected']:.2f}, p = {comparison['p_value']:.3f} (paired patient "
            f"bootstrap, for reference: [{comparison['kappa_diff_boot_low']:+.3f}, "
            f"{comparison['kappa_diff_boot_high']:+.3f}]); per-fold differences "
            f"{', '.join(f'{d:+.3f}' for d in differences)} (mean {np.mean(differences):+.3f}, "
            f"standard deviation {np.std(differences, ddof=1):.3f}: the fold noise).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass on a tiny config")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here")
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-crops-"))
    workdir.mkdir(parents=True, exist_ok=True)
    figures = crops_against_frames(workdir, arguments.tiny, arguments.cores)
    section = report(figures, arguments.tiny)
    print(section)
    if not arguments.tiny:
        write_section("## Crops vs whole frames", section)
    print(f"Work folder: {workdir}")


if __name__ == "__main__":
    main()
