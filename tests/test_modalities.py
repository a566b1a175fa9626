"""Several image modalities in one run: 1- and 3-channel branches, 16-bit depth maps, wound
crops against whole frames, every combination, per-member fusion weights and per-modality
settings that re-run only their own jobs."""

import numpy as np
import pandas as pd
import pytest

from bench.crops import FRAMES
from fusion_dag.artifacts import read_tsv
from fusion_dag.inference import fold_kappa_differences, paired_rows
from tests.conftest import CLASSES, HEADLINE, TINY, finished_run, run_snakemake, scheduled_jobs

pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("modalities")]

# Config order: the test's config file lists modalities alphabetically.
ALL = ["metadata", "depth_map", "thermal_frame", "thermal_map", "metadata+depth_map+thermal_map"]
# Thermal views (the demo's image table) on three channels, 16-bit depth maps (a samples column)
# on one, each alone and fused with metadata (the configured wound photographs are in no
# combination, so never read); and the demo's thermal views as whole frames (bench/crops.py's
# second modality), trained as the crops are, so the views are the only difference. Two folds
# keep the run small; the headline rows and the dry runs below need no more.
THERMAL = {"channels": 3, "size": 24, "epochs": 6}
MODALITIES = {
    **TINY,
    "cv": {"folds": 2, "repeats": 1, "seed": 42},
    "modalities": {
        "thermal_map": THERMAL,
        "thermal_frame": {**FRAMES["thermal_frame"], **THERMAL},
        "depth_map": {"column": "depth_map", "channels": 1, "value_range": [4100, 4500]},
    },
    "combinations": [name.split("+") for name in ALL],
}
# The run without its whole-frame modality, for the dry runs of bad fusion weights.
FUSED = {
    **MODALITIES,
    "combinations": [c for c in MODALITIES["combinations"] if c != ["thermal_frame"]],
}


@pytest.fixture(scope="module")
def modalities_run(tmp_path_factory):
    return finished_run(tmp_path_factory, "modalities", MODALITIES, HEADLINE)


def dry_run(workdir, config):
    result = run_snakemake(workdir, "-n", HEADLINE, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_one_and_three_channel_branches_fuse_in_one_run(modalities_run):
    headline = pd.read_csv(modalities_run / "results/fusion_results.tsv", sep="\t")
    # The fusion also scores every visit with the members it has (rows: all).
    assert headline["combination"].tolist() == [*ALL, ALL[-1]]
    assert headline["rows"].tolist() == ["complete"] * len(ALL) + ["all"]
    headline = headline[headline["rows"] == "complete"]
    for modality, shape in [("thermal_map", (24, 24, 3)), ("depth_map", (24, 24, 1))]:
        cache = pd.read_csv(modalities_run / f"results/prepared/{modality}_views.tsv", sep="\t")
        images = np.load(modalities_run / f"results/prepared/images/{modality}.npy", mmap_mode="r")
        assert images.shape == (len(cache), *shape)
    # Visits without a depth map are left out of the combinations that use it, not failed.
    rows = headline.set_index("combination")["n_rows"]
    assert rows["depth_map"] < rows["metadata"] and rows["thermal_map"] < rows["metadata"]
    log = modalities_run / "logs/fusion/metadata+depth_map+thermal_map/repeat1/fold1.log"
    text = log.read_text()
    assert (
        "Fusion weights: RF=0.70, Image=0.30 (metadata=0.70, depth_map=0.15, thermal_map=0.15)"
        in text
    )
    for modality in ("thermal_map", "depth_map"):
        assert f"Frozen {modality} branch reproduces the image stage" in text


def test_one_modalitys_setting_reruns_only_its_image_and_fusion_jobs(modalities_run):
    changed = {
        **MODALITIES,
        "modalities": {
            **MODALITIES["modalities"],
            "depth_map": {**MODALITIES["modalities"]["depth_map"], "epochs": 2},
        },
    }
    output = dry_run(modalities_run, changed)
    jobs = scheduled_jobs(output)
    assert jobs["image"] == 2 and "metadata" not in jobs and "image_cache" not in jobs
    depth = [name for name in ALL if "depth_map" in name]
    assert jobs["fusion"] == 2 * len(depth)
    scheduled = set(pd.Series(output.splitlines()).str.extract(r"combination=([\w+]+)")[0].dropna())
    assert scheduled == set(depth)
    assert "modality=thermal_map" not in output


def test_fusion_weights_per_member_rescale_within_each_combination(modalities_run):
    # Every member in use has a weight (thermal_frame's own combination weighs 1 whatever it is).
    weights = {"metadata": 0.6, "thermal_map": 0.2, "depth_map": 0.1, "thermal_frame": 0.1}
    output = dry_run(
        modalities_run, {**MODALITIES, "fusion": {"metadata_weight": 0.7, "weights": weights}}
    )
    jobs = scheduled_jobs(output)
    # Only the combination that fuses: a member alone weighs 1 whatever is configured.
    assert jobs["fusion"] == 2 and "image" not in jobs


@pytest.mark.parametrize(
    ("fusion", "message"),
    [
        (
            {
                "metadata_weight": 0.7,
                "weights": {"metadata": 0.7, "thermal_map": 0.2, "depth_map": 0.2},
            },
            "Invalid config key 'fusion.weights': the weights sum to 1.1, not 1",
        ),
        (
            {"metadata_weight": 0.7, "weights": {"metadata": 0.7, "thermal_map": 0.3}},
            "members without a weight ['depth_map']",
        ),
    ],
)
def test_bad_fusion_weights_are_refused_naming_the_key(tmp_path, fusion, message):
    result = run_snakemake(tmp_path, "-n", config={**FUSED, "fusion": fusion})
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_pretrained_weights_need_a_keras_backbone(tmp_path):
    config = {
        **MODALITIES,
        "modalities": {"thermal_map": {"backbone_weights": "imagenet"}},
        "combinations": [["thermal_map"]],
    }
    result = run_snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert (
        "Invalid config key 'modalities.thermal_map.backbone_weights': 'imagenet' needs a "
        "keras.applications backbone" in result.stdout + result.stderr
    )


def test_combinations_all_runs_every_subset_of_metadata_and_the_modalities(tmp_path):
    result = run_snakemake(tmp_path, "-n", "fusion_results", config={**TINY, "combinations": "all"})
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    names = set(pd.Series(output.splitlines()).str.extract(r"combination=([\w+]+)")[0].dropna())
    # Metadata and the demo's three modalities: 2**4 - 1 subsets, in config order.
    assert len(names) == 15 and "metadata+thermal_map+depth_map+wound_photo" in names
    assert scheduled_jobs(output)["fusion"] == 15 * TINY["cv"]["folds"]


def test_wound_crops_are_not_worse_than_whole_frames_beyond_the_fold_noise(modalities_run):
    """The demo's thermal views, cropped to their boxes and as whole 320 x 240 frames, in one
    run on the same folds: crops must not lose more than the spread of the per-fold
    differences (bench/crops.py measures it on the full demo)."""
    crops, frames = (
        read_tsv(modalities_run / f"results/fusion/{m}/oof.tsv")
        for m in ("thermal_map", "thermal_frame")
    )
    differences = fold_kappa_differences(*paired_rows(crops, frames), CLASSES)
    assert len(differences) == MODALITIES["cv"]["folds"]
    assert differences.mean() >= -differences.std(ddof=1)
    views = read_tsv(modalities_run / "results/prepared/thermal_frame_views.tsv")
    assert views["crop_x0"].isna().all() and views["x_min"].isna().all()
