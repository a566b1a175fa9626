"""Shared fixtures: tiny generated data in a temporary directory, never the user's results."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score

from fusion_dag.branch import configure_tensorflow
from fusion_dag.cache import build_cache, load_cache
from fusion_dag.checkpoint import checkpoint_sidecar
from fusion_dag.demo import THERMAL_TABLE, write_demo
from fusion_dag.folds import assign_folds
from fusion_dag.image import BranchFold, branch_probabilities, train_branch
from fusion_dag.prepare import prepare_inputs
from fusion_dag.views import BOX, VIEW_COLUMNS, with_crops

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
CLASSES = ["I", "P", "R"]
COLUMNS = {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": []}


@pytest.fixture(scope="session")
def demo_table(tmp_path_factory) -> Path:
    """A 40-patient demo table with its thermal maps (shared read-only by tests)."""
    path = tmp_path_factory.mktemp("demo") / "samples.csv"
    write_demo(path, patients=40, seed=7)
    return path


IMAGE_SETTINGS = {
    "size": 24,
    "epochs": 3,
    "batch_size": 32,
    "learning_rate": 0.001,
    "patience": 2,
    # One warm-up epoch: early stopping still judges epochs 2 and 3 of the tiny runs.
    "warmup_epochs": 1,
    "validation_fraction": 0.2,
    "intra_op_threads": 1,
}


def thermal_layout(demo_table: Path, **overrides) -> dict:
    """The demo's thermal image table as a modality layout (views with wound boxes)."""
    return {
        "images": str(demo_table.parent / THERMAL_TABLE),
        "path": "file",
        "keys": ["patient_id", "visit_number"],
        "box": list(BOX),
        "box_margin": 0.25,
        "image_dir": demo_table.parent,
        **overrides,
    }


def cache_modality(demo_table, folder: Path, size: int, channels: int):
    """The demo's thermal views cropped and cached at ``size`` px, ``channels`` deep:
    (cache, views, folds)."""
    samples, views, _ = prepare_inputs(
        demo_table, COLUMNS, CLASSES, {"thermal_map": thermal_layout(demo_table)}, "drop"
    )
    views = with_crops(views[list(VIEW_COLUMNS)], 0.25)
    build_cache(views, size, folder / "thermal_map.npy", channels=channels)
    views.to_csv(folder / "views.tsv", sep="\t", index=False)
    cache, views = load_cache(folder / "thermal_map.npy", folder / "views.tsv")
    return cache, views, assign_folds(samples, 3, 42, CLASSES)


@pytest.fixture(scope="session")
def cached(demo_table, tmp_path_factory):
    """The demo's thermal views cached at 24 px with 3 channels, with folds."""
    return cache_modality(demo_table, tmp_path_factory.mktemp("cache"), 24, channels=3)


@pytest.fixture(scope="session")
def cached32(demo_table, tmp_path_factory):
    """The demo's thermal views cached at 32 px (the smallest keras.applications backbones
    accept) with 3 channels, with folds."""
    return cache_modality(demo_table, tmp_path_factory.mktemp("cache32"), 32, channels=3)


def thermal_feature_cache(branch, images, settings: dict, folder: Path):
    """Write the feature cache of ``images`` for a thermal branch that holds its backbone's
    weights (a MobileNetV3Small) into ``folder``; return it loaded."""
    from fusion_dag.branch import feature_extractor
    from fusion_dag.features import load_feature_cache, write_feature_cache

    paths = {
        "features": folder / "features.npy",
        "backbone": folder / "backbone.weights.h5",
        "sidecar": folder / "features.json",
    }
    backbone = branch.get_layer("thermal_map_backbone")
    extractor = feature_extractor(branch, "thermal_map")
    write_feature_cache(extractor, backbone, images, settings, paths, "mobilenet_v3")
    return load_feature_cache(paths["features"], paths["sidecar"], paths["backbone"])


def train_tiny_branch(cached, folder: Path, **overrides):
    """Train the thermal branch on fold 1 of the cached demo into ``folder``; return the model."""
    configure_tensorflow(1, 1, 42)
    task = branch_fold(cached, **overrides)
    model, _ = train_branch(task, folder / "checkpoint.weights.h5", folder / "history.tsv")
    return model


def branch_fold(cached, fold=1, **overrides):
    """The thermal branch's task on one fold of the cached demo, with settings overridden."""
    cache, views, folds = cached
    return BranchFold(
        cache,
        views,
        folds,
        fold=fold,
        modality="thermal_map",
        classes=CLASSES,
        settings={**IMAGE_SETTINGS, **overrides},
        seed=42,
    )


@pytest.fixture
def keras_fits(monkeypatch):
    """Every keras Model.fit call's training and validation inputs."""
    import keras

    calls = []
    original = keras.Model.fit

    def spy(self, x=None, y=None, validation_data=None, **kwargs):
        calls.append((x, validation_data[0] if validation_data else None))
        return original(self, x, y, validation_data=validation_data, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    return calls


TINY = {
    # Four later patients for predict (the demo's 40 would double the tiny demo's images).
    "demo": {"patients": 40, "seed": 7, "new_patients": 4},
    # One partition of two folds keeps the end-to-end tests fast; tests of repeats raise it.
    "cv": {"folds": 2, "repeats": 1, "seed": 42},
    "combinations": [["metadata"], ["thermal_map"], ["metadata", "thermal_map"]],
    "metadata_model": {
        "n_estimators": 30,
        "min_samples_leaf": 2,
        "class_weight": "balanced",
        "inner_folds": 3,
    },
    "image_model": IMAGE_SETTINGS,
    # The demo's thermal views have a size of their own: the tiny one here.
    "modalities": {"thermal_map": {"size": IMAGE_SETTINGS["size"]}},
}


# The headline table and every job it needs (every model), without the report's figures: the
# target of a run whose tests read tables only.
HEADLINE = "results/fusion_results.tsv"
# The fusion's metadata-weight sweep (a diagnostics table, read by the module tests).
SWEEP = "results/diagnostics/metadata+thermal_map/weight_sweep.tsv"


def finished_run(tmp_path_factory, name: str, config: dict, *targets: str) -> Path:
    """A completed run of ``config`` in a new temporary folder: ``fusion_results``, or only
    ``targets`` (files) for a test that reads no table or figure of the report."""
    workdir = tmp_path_factory.mktemp(name)
    result = run_snakemake(workdir, "--cores", "2", *(targets or ["fusion_results"]), config=config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny run with metadata, thermal and their fusion (shared, read-only)."""
    return finished_run(tmp_path_factory, "tiny_run", TINY)


def merged(base: dict, override: dict) -> dict:
    """``override`` over ``base``, mappings merged key by key (as Snakemake merges configs)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def deploy_as_module(folder: Path, config: dict) -> None:
    """Make ``folder`` a user's own workflow that reuses this one as a Snakemake module (the
    catalogue's way), with ``config`` merged over the workflow's defaults as its config.yaml."""
    defaults = yaml.safe_load((REPO / "config/config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump(merged(defaults, config)))
    (folder / "Snakefile").write_text(
        f'''configfile: "config.yaml"


module fusion_dag:
    snakefile:
        "{SNAKEFILE}"
    config:
        config


use rule * from fusion_dag
'''
    )


IMAGE_LOG = "logs/image/thermal_map/repeat1/fold{}.log"


def kill_during_image_training(folder: Path, timeout=300) -> int:
    """Start ``folder``'s workflow on the headline, SIGKILL its whole process group once an image
    job is mid-training; return the fold whose image job was killed."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", HEADLINE]
    with open(folder / "killed_run.log", "w") as output:
        process = subprocess.Popen(
            command, cwd=folder, stdout=output, stderr=output, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fold in range(1, TINY["cv"]["folds"] + 1):
            log = folder / IMAGE_LOG.format(fold)
            if log.exists() and "Epoch 1/" in log.read_text():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return fold
        if process.poll() is not None:
            raise AssertionError("the run finished before an image job could be killed")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("no image job started training in time")


@pytest.fixture(scope="session")
def resumed(tmp_path_factory):
    """The tiny run's config as a user runs it: the workflow deployed as a module in a folder
    of its own, killed while an image branch trains, then resumed (shared, read-only; one run
    serves the module, interruption and reproducibility tests).

    Returns (folder, killed fold, the resumed run's output)."""
    folder = tmp_path_factory.mktemp("resumed")
    deploy_as_module(folder, TINY)
    fold = kill_during_image_training(folder)
    # The premise: the kill landed while that image job was incomplete (no checkpoint yet,
    # and Snakemake's incomplete marker for it left behind).
    stage = folder / f"results/image/thermal_map/repeat1/fold{fold}"
    assert not (stage / "checkpoint.weights.h5").exists()
    assert any((folder / ".snakemake/incomplete").iterdir())
    assert not (folder / HEADLINE).exists()
    # A SIGKILL leaves Snakemake's directory lock behind; --unlock only removes that lock.
    assert run_command(folder, ["--unlock"]).returncode == 0
    arguments = ["--cores", "2", "--rerun-incomplete", HEADLINE, SWEEP]
    result = run_command(folder, arguments)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return folder, fold, output


@pytest.fixture
def tiny_copy(tiny_run, tmp_path):
    """A private copy of the finished tiny run, for a test that changes or adds files.

    Timestamps are kept (``copy2``), so Snakemake sees the copy as finished too.
    """
    copy = tmp_path / "tiny_copy"
    shutil.copytree(tiny_run, copy, symlinks=True)
    return copy


def snakemake_command(workdir: Path, *args: str, config: dict | None = None) -> list:
    """The command that runs this repository's workflow in ``workdir``."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE)]
    command += ["--directory", str(workdir), *args]
    if config is not None:
        configfile = workdir / "test_config.yaml"
        configfile.write_text(yaml.safe_dump(config))
        command += ["--configfile", str(configfile)]
    return command


def run_snakemake(workdir: Path, *args: str, config: dict | None = None):
    """Run this repository's workflow in ``workdir``; return the completed process."""
    command = snakemake_command(workdir, *args, config=config)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def run_command(workdir: Path, arguments: list):
    """Run ``snakemake`` with ``arguments`` in ``workdir`` (its own Snakefile, if any)."""
    command = [sys.executable, "-m", "snakemake", *arguments]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)


def scheduled_jobs(output: str) -> dict:
    """Rule -> job count from the 'Job stats' table a (dry) run prints.

    Empty only when Snakemake says there is nothing to be done; any other output without a job
    table (an error, a changed message format) fails instead of passing as "no jobs".
    """
    lines = output.splitlines()
    if "Job stats:" not in lines:
        if "Nothing to be done" in output:
            return {}
        raise AssertionError(f"no job table in Snakemake's output:\n{output[-2000:]}")
    counts = {}
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def synthetic_oof(skill: float, repeats: int = 2, patients: int = 60, seed: int = 0):
    """Pooled out-of-fold predictions: 3 visits per patient, 3 folds, ``skill`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(patients, 3))
    rows = []
    for repeat in range(1, repeats + 1):
        folds = rng.permutation(np.arange(patients) % 3) + 1
        for patient in range(patients):
            for visit in range(3):
                label = labels[patient, visit]
                probs = rng.dirichlet(np.ones(3))
                probs = (1 - skill) * probs + skill * np.eye(3)[label]
                rows.append(
                    {
                        "repeat": repeat,
                        "fold": folds[patient],
                        "id": f"p{patient}_v{visit}",
                        "group": f"p{patient}",
                        "label": CLASSES[label],
                        **{f"prob_{c}": probs[k] for k, c in enumerate(CLASSES)},
                    }
                )
    return pd.DataFrame(rows)


def fold_kappas(oof):
    """Each (repeat, fold)'s kappa with scikit-learn, and n_test / n_train of each fold."""
    kappas, shares = [], []
    for (repeat, _), rows in oof.groupby(["repeat", "fold"]):
        predicted = rows[[f"prob_{c}" for c in CLASSES]].to_numpy().argmax(axis=1)
        kappas.append(cohen_kappa_score(rows["label"].map(CLASSES.index), predicted))
        shares.append(len(rows) / ((oof["repeat"] == repeat).sum() - len(rows)))
    return np.array(kappas), np.mean(shares)


@pytest.fixture(scope="session")
def pretrained(cached, tmp_path_factory):
    """A thermal branch trained for two epochs on fold 1, shared by the fusion and checkpoint
    tests: its checkpoint, visit probabilities, sidecar, model and per-view probabilities."""
    folder = tmp_path_factory.mktemp("pretrained")
    model = train_tiny_branch(cached, folder, epochs=2)
    probs, view_probs = branch_probabilities(model, branch_fold(cached))
    checkpoint = folder / "checkpoint.weights.h5"
    manifest = checkpoint_sidecar(model, "thermal_map", "small_cnn", (1, 1), CLASSES, checkpoint)
    return checkpoint, probs, manifest, model, view_probs
