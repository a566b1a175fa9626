"""The model bundle: the final models and everything needed to apply them, in one folder.

Why a folder of its own: a team validates on another clinic's table, or scores next month's
visits, on a machine that has neither the training data nor the workflow's results. The bundle
holds the final forest (skops), each modality's final branch checkpoint with its sidecar, and a
``manifest.json`` with the model spec (classes, table columns, feature columns and their types,
each modality's image preprocessing and branch settings, the combinations and fusion weights),
the merged config, provenance (data hashes, package versions, git commit) and the SHA-256 of
every file. Loading verifies every file against the manifest before anything is read; nothing in
the bundle is unpickled or executed (skops with an explicit trusted-type list, HDF5 weights read
by layer name, JSON).
"""

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import (
    GROUP,
    ID,
    LABEL,
    InputError,
    file_sha256,
    prob_columns,
    read_json,
    write_json,
)
from fusion_dag.folds import FINAL_PLACEMENT
from fusion_dag.views import AGGREGATION
from fusion_dag.weights import METADATA

FORMAT = "fusion-dag-bundle/1"
MANIFEST = "manifest.json"
FOREST = "metadata/model.skops"
# What predicting needs of each modality's settings: how its images are read, and the branch
# architecture the checkpoint is loaded into.
IMAGE_KEYS = ("size", "channels", "value_range", "backbone", "augmentation", "mixed_precision")
# Architecture keys a branch may lack (built before them): absent, the branch is built without.
OPTIONAL_IMAGE_KEYS = ("standardize", "batch_norm", "pooling")


class BundleError(InputError):
    """A bundle that is incomplete, altered, or not what the prediction needs."""


def feature_types(samples: pd.DataFrame) -> list:
    """The forest's feature columns in training order, each ``numeric`` or ``text``.

    The order matters (the fitted column transformer checks names and order) and so does the
    type: a new table's column is read as the type it had in training.
    """
    features = samples.drop(columns=[ID, GROUP, LABEL])
    return [
        {"name": name, "type": "numeric" if pd.api.types.is_numeric_dtype(kind) else "text"}
        for name, kind in features.dtypes.items()
    ]


def image_layout(settings: dict) -> dict:
    """How a modality's images are found and cut, as the bundle records it: the samples
    ``column``; or, for an image table, its ``path`` column, the ``keys`` that join it to the
    visits, the ``box`` columns, the ``box_margin`` and how views make a visit
    (``aggregation``). A new visit's images are read exactly this way."""
    if "column" in settings:
        return {"column": settings["column"]}
    return {
        "path": settings["path"],
        "keys": list(settings["keys"]),
        "box": settings["box"],
        "box_margin": settings["box_margin"],
        "aggregation": AGGREGATION,
    }


def model_spec(
    samples: pd.DataFrame,
    columns: dict,
    classes: list,
    modalities: dict,
    combinations: dict,
    fusion: dict,
    na_values=(),
) -> dict:
    """What applying the final models needs to know, apart from the models themselves.

    ``modalities`` maps each modality in use to its image settings plus its layout
    (:func:`image_layout`);
    ``combinations`` each selected combination to its members; ``fusion`` holds
    ``metadata_weight`` and ``weights``; ``na_values`` the strings read as missing cells, so a
    new table is read as the training table was. The default combination for prediction is the
    one with the most members (the first listed among equals).
    """
    uses_metadata = any(METADATA in members for members in combinations.values())
    return {
        "format": FORMAT,
        "classes": list(classes),
        "columns": {key: columns.get(key) for key in ("id", "group", "label")},
        "na_values": list(na_values),
        "features": feature_types(samples) if uses_metadata else [],
        "modalities": {
            name: {
                **image_layout(settings),
                **{k: settings[k] for k in IMAGE_KEYS},
                **{k: settings[k] for k in OPTIONAL_IMAGE_KEYS if k in settings},
            }
            for name, settings in modalities.items()
        },
        "combinations": {name: list(members) for name, members in combinations.items()},
        "default_combination": max(combinations, key=lambda name: len(combinations[name])),
        "fusion": {
            "metadata_weight": fusion["metadata_weight"],
            "weights": fusion.get("weights"),
        },
    }


def with_learned_fusion(spec: dict, final_fusions: list) -> dict:
    """``spec`` with ``learned_fusion``: combination -> ``weights`` and ``temperature`` (None
    unless learned) of each final fusion that learned them (``fusion.learn``; ``final_fusions``
    are the final fusion jobs' metrics records), so predict fuses as the final models were
    fused. ``spec`` unchanged when none learned."""
    learned = {
        record["combination"]: {
            "weights": record["weights"],
            "temperature": record.get("temperature"),
        }
        for record in final_fusions
        if "learned_visits" in record
    }
    return {**spec, "learned_fusion": learned} if learned else spec


def combination_fusion(spec: dict, members: list) -> tuple[dict, float | None]:
    """(the ``fusion`` settings :func:`~fusion_dag.weights.fuse_rows` weighs ``members`` by,
    the temperature applied to the fused probabilities or None). With weights the final fusion
    learned (:func:`with_learned_fusion`), they take ``fusion.weights``' place: a visit lacking
    a member is fused from the others' learned weights rescaled to 1."""
    learned = spec.get("learned_fusion", {}).get("+".join(members))
    if not learned:
        return spec["fusion"], None
    return {**spec["fusion"], "weights": learned["weights"]}, learned["temperature"]


def choose_combination(spec: dict, requested: str | None) -> list:
    """The members of the combination to predict with: ``requested`` or the spec's default."""
    name = requested or spec["default_combination"]
    if name not in spec["combinations"]:
        raise BundleError(
            f"predict.combination '{name}' is not in the bundle; it holds "
            f"{', '.join(spec['combinations'])}"
        )
    return spec["combinations"][name]


def collapsed_branches(branch_probs: dict, classes: list) -> dict:
    """Each final image branch whose training-row predictions all fall in one class:
    modality -> that class. ``branch_probs`` maps modality to its final probabilities table.

    Such a branch has learned nothing from the images (a small network that stopped at its
    first plateau predicts the class prior); fused with its weight, it only shifts the
    forest's probabilities, and on new patients its kappa is 0.
    """
    columns = prob_columns(classes)
    collapsed = {}
    for modality, probs in branch_probs.items():
        train = probs[probs["split"] == "train"]
        predicted = np.unique(train[columns].to_numpy().argmax(axis=1))
        if len(train) and len(predicted) == 1:
            collapsed[modality] = classes[predicted[0]]
    return collapsed


def check_collapsed(collapsed: dict, allow: bool) -> None:
    """Refuse to bundle a collapsed final branch (see :func:`collapsed_branches`) unless
    ``final.allow_collapsed`` is true; one line names the branch and the settings to change."""
    if not collapsed or allow:
        return
    branches = "; ".join(
        f"{modality} predicts class {name} for every training row"
        for modality, name in collapsed.items()
    )
    first = next(iter(collapsed))
    raise BundleError(
        f"final image branch {branches}: it has not learned from the images, so the bundle is "
        f"not written; raise modalities.{first}.patience or epochs (or check its images), "
        f"leave {first} out of 'combinations', or set final: {{allow_collapsed: true}} to "
        "bundle it anyway"
    )


# The bundle's training patients, as salted hashes of their group ids (not the ids).
PATIENTS = "training_patients.json"
PATIENT_HASH = "sha256(salt + ':' + group)"


def patient_hashes(groups, salt: str) -> list:
    """The sorted, distinct SHA-256 hex digests of ``salt:group`` for each group id."""
    return sorted({hashlib.sha256(f"{salt}:{group}".encode()).hexdigest() for group in groups})


def training_patients(groups, salt: str | None = None) -> dict:
    """The record of the patients the final models were fit on: ``salt``, ``hash`` (how each
    digest is made) and ``patients`` (:func:`patient_hashes`).

    Why hashes: ``predict`` must know whether a new visit's patient trained the bundle (its
    metrics would be in-sample), but a bundle travels to other machines and should not carry
    the training table's patient ids. Why a salt, random per bundle (``secrets``): the same
    patient in two bundles gets unrelated digests, so bundles cannot be joined on them and no
    precomputed table of digests of common id formats applies. The salt does not make a short
    id space secret (``P001``...``P999`` can be hashed in milliseconds with the salt at hand):
    the record hides the ids from a reader, it does not anonymise them.
    """
    salt = salt or secrets.token_hex(16)
    return {"salt": salt, "hash": PATIENT_HASH, "patients": patient_hashes(groups, salt)}


def seen_in_training(folder: Path, manifest: dict, groups: pd.Series) -> pd.Series:
    """For each group id, whether its patient trained the bundle (boolean); missing (``NA``)
    for every row when the bundle records no training patients (built before it did)."""
    if PATIENTS not in manifest["files"]:
        return pd.Series(pd.NA, index=groups.index, dtype="boolean")
    record = read_json(Path(folder) / PATIENTS)
    known = set(record["patients"])
    digests = {g: patient_hashes([g], record["salt"])[0] for g in groups.unique()}
    return groups.map(lambda group: digests[group] in known).astype("boolean")


def calibration_files(combination: str) -> tuple[str, str]:
    """A combination's conformal calibration scores and their summary, relative to the bundle."""
    return f"calibration/{combination}.tsv", f"calibration/{combination}.json"


def calibration_records(oof_tables: dict, classes: list, coverage: float) -> dict:
    """combination -> (its calibration scores: ``label``, ``score``; its summary: method,
    calibration visits, and the coverage and mean set size its sets had in cross-validation
    at ``coverage``), from each combination's pooled out-of-fold table
    (:mod:`fusion_dag.conformal`). No id or group leaves the run."""
    from fusion_dag.conformal import METHOD, calibration_table, cross_validated_sets

    records = {}
    for name, oof in oof_tables.items():
        calibration = calibration_table(oof, classes)
        summary = {
            "method": METHOD,
            "calibration_visits": len(calibration),
            "cross_validated": cross_validated_sets(oof, calibration, classes, coverage),
        }
        records[name] = (calibration[[LABEL, "score"]], summary)
    return records


def load_calibration(folder: Path, manifest: dict, combination: str) -> pd.DataFrame:
    """A bundled combination's calibration scores; a :class:`BundleError` when it has none."""
    scores, _ = calibration_files(combination)
    if scores not in manifest["files"]:
        raise BundleError(
            f"Invalid config key 'predict.coverage': bundle {folder} holds no calibration for "
            f"{combination}; build it with predict.coverage set (final_models then calibrates "
            "every combination on its out-of-fold probabilities), or set predict.coverage: null"
        )
    return pd.read_csv(Path(folder) / scores, sep="\t", dtype={LABEL: str})


def checkpoint_files(modality: str) -> tuple[str, str]:
    """A modality's checkpoint and sidecar, relative to the bundle folder."""
    return f"image/{modality}/checkpoint.weights.h5", f"image/{modality}/checkpoint.json"


def write_bundle(
    folder: Path,
    spec: dict,
    forest: Path | None,
    checkpoints: dict,
    config: dict,
    provenance: dict,
    final_checks: dict | None = None,
    patients: dict | None = None,
    calibration: dict | None = None,
) -> dict:
    """Copy the final models into ``folder`` with their manifest; return the manifest.

    ``checkpoints`` maps each modality to its (checkpoint, sidecar) files; ``patients`` is the
    record of the training patients (:func:`training_patients`, written as :data:`PATIENTS`);
    ``calibration`` each combination's conformal records (:func:`calibration_records`);
    ``final_checks``
    (recorded as it is) says which branches collapsed and whether that was allowed. The folder is
    written under a temporary name and renamed, so an interrupted job never leaves a bundle
    that looks complete.
    """
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    sources = {FOREST: forest} if forest is not None else {}
    for modality, (checkpoint, sidecar) in checkpoints.items():
        sources.update(dict(zip(checkpoint_files(modality), (checkpoint, sidecar), strict=True)))
    for relative, source in sources.items():
        (partial / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial / relative)
    write_json(config, partial / "config.json")
    written = [*sources, "config.json"]
    if patients is not None:
        write_json(patients, partial / PATIENTS)
        written.append(PATIENTS)
    for name, (scores, summary) in (calibration or {}).items():
        table, record = calibration_files(name)
        (partial / table).parent.mkdir(parents=True, exist_ok=True)
        scores.to_csv(partial / table, sep="\t", index=False)
        write_json(summary, partial / record)
        written += [table, record]
    files = {relative: file_sha256(partial / relative) for relative in written}
    manifest = {**spec, "provenance": provenance, "final_checks": final_checks or {}}
    manifest["files"] = dict(sorted(files.items()))
    manifest[SPEC_HASH] = spec_sha256(manifest)
    write_json(manifest, partial / MANIFEST)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return manifest


# The manifest's hash of its own model spec: a manifest edited by hand (classes reordered, a
# feature's type changed) would otherwise relabel or misread every prediction without a word.
SPEC_HASH = "spec_sha256"


def spec_sha256(manifest: dict) -> str:
    """SHA-256 of the manifest's model spec (everything but provenance, file hashes and this)."""
    spec = {k: v for k, v in manifest.items() if k not in ("provenance", "files", SPEC_HASH)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def load_bundle(folder: Path) -> dict:
    """Read and verify a bundle's manifest; return it.

    Every file the manifest lists must exist with its recorded SHA-256; the files its
    combinations need (the forest, each modality's checkpoint and sidecar) must be listed; each
    sidecar must describe its checkpoint (hash, modality, final partition, classes, image size
    and channels). Anything else is a :class:`BundleError` naming the file.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not folder.exists():
        raise BundleError(f"bundle {folder} does not exist; set predict.bundle to a bundle folder")
    if not folder.is_dir():
        raise BundleError(
            f"bundle {folder} is a file; set predict.bundle to the folder that holds {MANIFEST}"
        )
    if not manifest_path.is_file():
        raise BundleError(f"bundle {folder} has no {MANIFEST}; build one with final_models")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"bundle manifest {manifest_path} is not JSON: {error}") from None
    if not isinstance(manifest, dict) or SPEC_HASH not in manifest:
        raise BundleError(
            f"bundle manifest {manifest_path} records no {SPEC_HASH}: its model spec cannot be "
            "checked; rebuild or re-copy the bundle"
        )
    if spec_sha256(manifest) != manifest[SPEC_HASH]:
        raise BundleError(
            f"bundle manifest {manifest_path} was edited: its model spec (classes, columns, "
            "features, modalities, combinations, weights) no longer matches its recorded hash; "
            "rebuild or re-copy the bundle"
        )
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"bundle manifest {manifest_path} has format {manifest.get('format')!r}, "
            f"this workflow reads {FORMAT}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(
            f"bundle manifest {manifest_path} records no files with their sha256; rebuild or "
            "re-copy the bundle"
        )
    for relative, digest in manifest["files"].items():
        path = folder / relative
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing (listed in {manifest_path})")
        if file_sha256(path) != digest:
            raise BundleError(
                f"bundle file {path} does not match its manifest (sha256 {file_sha256(path)[:12]}"
                f"..., manifest {digest[:12]}...); the bundle was altered: rebuild or re-copy it"
            )
    members = sorted({m for ms in manifest["combinations"].values() for m in ms})
    needed = [FOREST] if METADATA in members else []
    for modality in (m for m in members if m != METADATA):
        needed += checkpoint_files(modality)
    unlisted = [relative for relative in needed if relative not in manifest["files"]]
    if unlisted:
        raise BundleError(f"bundle {folder} lacks {', '.join(unlisted)} (not in its manifest)")
    for modality in (m for m in members if m != METADATA):
        check_sidecar(folder, manifest, modality)
    return manifest


def check_sidecar(folder: Path, manifest: dict, modality: str) -> None:
    """A bundled checkpoint's sidecar must describe it and agree with the manifest (the same
    check every fusion job makes, :func:`~fusion_dag.checkpoint.sidecar_problems`)."""
    from fusion_dag.checkpoint import sidecar_problems

    checkpoint, sidecar = (folder / name for name in checkpoint_files(modality))
    settings = manifest["modalities"][modality]
    repeat, fold = FINAL_PLACEMENT
    required = {
        "modality": modality,
        "repeat": repeat,
        "fold": fold,
        "classes": manifest["classes"],
        "image_size": settings["size"],
        "channels": settings["channels"],
        "backbone": settings["backbone"],
    }
    problems = sidecar_problems(checkpoint, read_json(sidecar), required, "the manifest")
    if problems:
        raise BundleError(
            f"bundle file {sidecar} does not match {checkpoint.name}: " + "; ".join(problems)
        )
