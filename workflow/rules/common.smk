import itertools
import re
import sys
from pathlib import Path

from jsonschema.exceptions import ValidationError
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package's config module, from the folder the rule scripts import it from (this file's
# ../scripts, also when the workflow is used as a module from another folder).
RULES_FOLDER = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
sys.path.insert(0, str(RULES_FOLDER.parent / "scripts"))
from fusion_dag.config import (
    ConfigError,
    class_names,
    check_columns,
    check_fusion_weights,
    check_primary,
    check_review,
    check_image_settings,
    check_layouts,
    command_line_values,
    load_schema,
    modalities_in_use,
    modality_column,
    modality_settings,
    review_combination,
    schema_error,
    selected_combinations,
)
from fusion_dag.features import FLIP_ONLY, flips, no_cache_reason

SCHEMA_PATH = workflow.source_path("../schemas/config.schema.yaml")


def validate_config(config):
    """Type command-line values, then check the merged config against the schema (Snakemake
    fills the schema's defaults); fail with one line naming the key."""
    schema = load_schema(SCHEMA_PATH)
    config.update(command_line_values(dict(config), schema))
    check_layouts(config)
    try:
        validate(config, schema=SCHEMA_PATH)
    except WorkflowError as error:
        if not isinstance(error.__context__, ValidationError):
            raise
        raise WorkflowError(schema_error(config, schema)) from None


try:
    validate_config(config)
    config["classes"] = class_names(config["classes"])
    check_columns(config["columns"])
    COMBINATIONS = selected_combinations(config)
    check_fusion_weights(config, COMBINATIONS)
    check_primary(config)
    check_review(config, COMBINATIONS)
    # Modalities some selected combination uses: only these are read, validated and trained.
    MODALITIES = modalities_in_use(config, COMBINATIONS)
    check_image_settings(config, MODALITIES)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
# Each configured modality's image settings (image_model with its own overrides).
MODALITY_SETTINGS = {
    name: modality_settings(config, name) for name in config["modalities"]
}

# Modalities in use whose head trains on the backbone's cached features (rule features).
FEATURE_MODALITIES = [
    name for name in MODALITIES if no_cache_reason(MODALITY_SETTINGS[name]) is None
]


def image_setting(key):
    """A params function: one setting of the job's modality, so that the rule re-runs only
    when that setting changes."""
    return lambda wildcards: MODALITY_SETTINGS[wildcards.modality][key]


# Path columns of configured modalities not in use: never metadata features either.
IGNORED_IMAGE_COLUMNS = sorted(
    {modality_column(config, name) for name in config["modalities"]}
    - {layout.get("column") for layout in MODALITIES.values()}
    - {None}
)
REPEATS = list(range(1, config["cv"]["repeats"] + 1))
FOLDS = list(range(1, config["cv"]["folds"] + 1))
# (repeat, fold) of every partition's fold.
PARTITIONS = [(repeat, fold) for repeat in REPEATS for fold in FOLDS]
# Combinations of metadata with exactly one image: the ones diagnostics and the ablation study.
PAIRS = {
    name: members[1]
    for name, members in COMBINATIONS.items()
    if len(members) == 2 and members[0] == "metadata"
}
DEMO_TABLE = "resources/demo/samples.csv"
# Image tables the demo_data rule writes.
DEMO_IMAGE_TABLES = [Path("resources/demo/thermal_images.csv")]


wildcard_constraints:
    repeat=r"\d+",
    fold=r"\d+",
    combination="|".join(re.escape(name) for name in COMBINATIONS),
    modality="|".join(re.escape(name) for name in MODALITIES) or "(?!)",


def feature_settings(wildcards):
    """What a modality's feature cache depends on besides its image cache: the backbone, its
    weights source, whether flips are cached, TensorFlow's intra-op threads and, for a seeded
    random initialisation only, the seed. No fold setting (epochs, batch size, learning rate,
    patience, cv.repeats, fusion weights) is among them, so none re-runs the features.
    """
    settings = MODALITY_SETTINGS[wildcards.modality]
    random_weights = settings["backbone_weights"] is None
    return {
        "backbone": settings["backbone"],
        "backbone_weights": settings["backbone_weights"],
        "augmentation": FLIP_ONLY if flips(settings) else None,
        "intra_op_threads": settings["intra_op_threads"],
        "seed": config["cv"]["seed"] if random_weights else None,
    }


def feature_files(modality, prefix=""):
    """A modality's feature cache files as inputs named ``{prefix}features``,
    ``{prefix}features_sidecar`` and ``{prefix}features_backbone``; none when its branch trains
    on pixels."""
    if modality not in FEATURE_MODALITIES:
        return {}
    folder = f"results/features/{modality}"
    return {
        f"{prefix}features": f"{folder}/features.npy",
        f"{prefix}features_sidecar": f"{folder}/features.json",
        f"{prefix}features_backbone": f"{folder}/backbone.weights.h5",
    }


def feature_inputs(wildcards):
    """An image job's feature cache, when its modality has one."""
    return feature_files(wildcards.modality)


def partition_files(**patterns):
    """A params function: one record per partition's fold, with its ``repeat``, ``fold`` and,
    for each named pattern, that fold's file (patterns may use the job's wildcards).

    Rule scripts read a file's repeat and fold from its record instead of from its position in
    an input list, so no script depends on the order ``expand()`` lists files in.
    """

    def records(wildcards):
        return [
            {
                "repeat": repeat,
                "fold": fold,
                **{
                    key: pattern.format(
                        **dict(wildcards.items()), repeat=repeat, fold=fold
                    )
                    for key, pattern in patterns.items()
                },
            }
            for repeat, fold in PARTITIONS
        ]

    return records


def files_of(records, key):
    """An input function: the ``key`` file of each record of ``records`` (a params function
    from :func:`partition_files`), so a rule's inputs and its records are one list."""
    return lambda wildcards: [record[key] for record in records(wildcards)]


# Each fold's files of the rules that gather every fold (see partition_files).
FUSION_FOLD_FILES = partition_files(
    probs="results/fusion/{combination}/repeat{repeat}/fold{fold}/probs.tsv"
)
HISTORY_FOLD_FILES = partition_files(
    history="results/image/{modality}/repeat{repeat}/fold{fold}/history.tsv"
)


def samples_input(wildcards):
    """The samples table, as prepare's input, when it exists (or the demo rule makes it).

    A table that does not exist is left out of the inputs so that prepare runs and says so in
    fusion-dag's own line, rather than Snakemake stopping with a MissingInputException.
    """
    samples = config["samples"]
    exists = Path(samples) == Path(DEMO_TABLE) or Path(samples).exists()
    return {"table": samples} if exists else {}


def image_table_inputs(wildcards):
    """The image tables of the modalities in use that exist (or the demo rule makes), so a
    changed image table re-runs prepare; one that does not exist is left out, for prepare to
    name it in fusion-dag's own line. Image files are not inputs: prepare checks each one the
    tables name, and the workflow assumes a file system shared by all jobs (as on SLURM).
    """
    tables = {}
    for modality, layout in MODALITIES.items():
        path = layout.get("images")
        demo = Path(path or "").resolve() in [t.resolve() for t in DEMO_IMAGE_TABLES]
        if path and (demo or Path(path).exists()):
            tables[f"{modality}_images"] = path
    return tables


def repeat_seed(wildcards):
    """The seed of one repeat: cv.seed for repeat 1, then cv.seed + 1, ...; it seeds the
    repeat's partition and every model in it (forest, inner splits, TensorFlow, early-stopping
    split), so repeats vary the models' randomness as well as the partition. The final models,
    outside every repeat, use cv.seed."""
    repeat = int(getattr(wildcards, "repeat", 1))
    return config["cv"]["seed"] + repeat - 1


def combination_inputs(members, metadata, stage):
    """What a combination fuses: the metadata probabilities ``metadata`` (name -> file) and, for
    each image member, its pretrained checkpoint and sidecar (so fusion cannot run before the
    image stage), its probabilities and, when it meets another member, its per-view
    probabilities and its image cache with the cache's views.
    ``stage(modality)`` is the folder of that member's image stage."""
    inputs = dict(metadata) if "metadata" in members else {}
    for modality in members:
        if modality != "metadata":
            inputs[f"{modality}_checkpoint"] = (
                f"{stage(modality)}/checkpoint.weights.h5"
            )
            inputs[f"{modality}_sidecar"] = f"{stage(modality)}/checkpoint.json"
            inputs[f"{modality}_probs"] = f"{stage(modality)}/probs.tsv"
            if len(members) > 1:
                inputs[f"{modality}_view_probs"] = f"{stage(modality)}/view_probs.tsv"
                inputs[f"{modality}_cache"] = f"results/prepared/images/{modality}.npy"
                inputs[f"{modality}_views"] = f"results/prepared/{modality}_views.tsv"
                inputs.update(feature_files(modality, prefix=f"{modality}_"))
    return inputs


def fusion_inputs(wildcards):
    """A fold's fusion inputs: the fold's metadata probabilities (out-of-fold and in-sample,
    for fit_kappa) and the fold's image stages."""
    place = f"repeat{wildcards.repeat}/fold{wildcards.fold}"
    metadata = {
        "metadata": f"results/metadata/{place}/probs.tsv",
        "metadata_fit": f"results/metadata/{place}/fit_probs.tsv",
    }
    return combination_inputs(
        COMBINATIONS[wildcards.combination],
        metadata,
        lambda modality: f"results/image/{modality}/{place}",
    )


def final_fusion_inputs(wildcards):
    """The final fusion's inputs: the final forest's and final branches' outputs."""
    return combination_inputs(
        COMBINATIONS[wildcards.combination],
        {"metadata": "results/final/metadata/probs.tsv"},
        lambda modality: f"results/final/image/{modality}",
    )


def weight_settings(members):
    """What decides a combination's member weights: ``fusion.weights`` restricted to its
    members when given, else ``fusion.metadata_weight`` (only when metadata meets an image);
    nothing for a member alone.
    Only these are a job's params, so changing one weight re-runs only the jobs it affects.
    """
    weights = config["fusion"].get("weights")
    if len(members) == 1:
        return {}  # a member alone weighs 1
    if weights:
        return {"weights": {member: weights[member] for member in members}}
    if "metadata" in members:
        return {"metadata_weight": config["fusion"]["metadata_weight"]}
    return {}


def pair_weight_settings(wildcards):
    """weight_settings of a metadata + image combination (diagnostics, ablation)."""
    return weight_settings(COMBINATIONS[wildcards.combination])


# The settings a branch is rebuilt from in fusion (size and channels come from the cache).
BRANCH_KEYS = ["backbone", "augmentation", "mixed_precision"]


def fusion_settings(wildcards):
    """Only the settings this combination's fusion uses, so that changing one re-runs only the
    fusion jobs it affects: the member weights, each image member's branch architecture, and
    the batch size, TensorFlow intra-op threads and seed of the frozen branches' inference
    (none for an image alone, whose probabilities are the image stage's).
    """
    members = COMBINATIONS[wildcards.combination]
    settings = {"weights": weight_settings(members)}
    images = [member for member in members if member in MODALITIES]
    if images:
        settings["branches"] = {
            m: {key: MODALITY_SETTINGS[m][key] for key in BRANCH_KEYS} for m in images
        }
    if len(members) > 1 and images:
        settings["batch_size"] = config["image_model"]["batch_size"]
        settings["intra_op_threads"] = config["image_model"]["intra_op_threads"]
        settings["seed"] = repeat_seed(wildcards)
    return settings


def backbone_weights_input(modality):
    """An input function: a modality's pretrained backbone file, when it is a path, so a new
    file re-runs the jobs that train that modality's branch (image stage, ablation)."""

    def inputs(wildcards):
        name = modality(wildcards)
        weights = MODALITY_SETTINGS[name]["backbone_weights"]
        return {} if weights in (None, "imagenet") else {"backbone_weights": weights}

    return inputs


def trained_models(wildcards):
    """Every fold's trained models, which the fusion_results target requires.

    Snakemake does not rebuild a missing intermediate file whose consumers are up to date, but
    it does rebuild a missing input of a target rule that has no outputs of its own.
    """
    models = expand(
        "results/image/{modality}/repeat{repeat}/fold{fold}/checkpoint.weights.h5",
        modality=MODALITIES,
        repeat=REPEATS,
        fold=FOLDS,
    )
    if any("metadata" in members for members in COMBINATIONS.values()):
        models += expand(
            "results/metadata/repeat{repeat}/fold{fold}/model.skops",
            repeat=REPEATS,
            fold=FOLDS,
        )
    return models


def run_metrics(wildcards):
    """Every image and fusion job's metrics, which record how each job ran (threads)."""
    return expand(
        "results/image/{modality}/repeat{repeat}/fold{fold}/metrics.json",
        modality=MODALITIES,
        repeat=REPEATS,
        fold=FOLDS,
    ) + expand(
        "results/fusion/{combination}/repeat{repeat}/fold{fold}/metrics.json",
        combination=COMBINATIONS,
        repeat=REPEATS,
        fold=FOLDS,
    )


def member_stage_probs(member, repeat, fold):
    """A fold's probabilities of one member alone: the forest's, or an image branch's."""
    if member == "metadata":
        return f"results/metadata/repeat{repeat}/fold{fold}/probs.tsv"
    return f"results/image/{member}/repeat{repeat}/fold{fold}/probs.tsv"


def member_records(members):
    """Each fold's record of each of ``members``: ``member``, ``repeat``, ``fold`` and its
    stage probabilities (member_stage_probs)."""
    return [
        {
            "member": member,
            "repeat": repeat,
            "fold": fold,
            "probs": member_stage_probs(member, repeat, fold),
        }
        for member in sorted(members)
        for repeat, fold in PARTITIONS
    ]


def member_fold_files(wildcards):
    """The fold records of every member of a fusion, from which aggregate_results scores every
    visit with the members it has (the headline's ``rows: all``), as predict does."""
    return member_records(
        {m for ms in COMBINATIONS.values() if len(ms) > 1 for m in ms}
    )


# The report's front page, written with the headline: the run's verdicts and tables.
FRONT_PAGE = "results/report/front_page.rst"


def report_front_page():
    """The page the report opens on: the run's front page (verdicts and headline first) once
    aggregate_results has written it, else the workflow's description."""
    page = Path(FRONT_PAGE)
    return str(page.resolve()) if page.is_file() else "report/workflow.rst"


def run_summary():
    """What the front page says was run: classes, folds, repeats, the primary, the image
    modalities and the fusion weights."""
    weights = config["fusion"].get("weights")
    if weights:
        described = ", ".join(
            f"{member} {weight:g}" for member, weight in weights.items()
        )
    else:
        share = 1 - config["fusion"]["metadata_weight"]
        described = (
            f"{config['fusion']['metadata_weight']:.2f} x RF + {share:.2f} x the images, "
            "shared equally"
        )
    return {
        "classes": config["classes"],
        "folds": config["cv"]["folds"],
        "repeats": config["cv"]["repeats"],
        "primary": config["evaluation"]["primary"],
        "modalities": list(MODALITIES),
        "weights": described,
    }


def diagnostic_fold_files(wildcards):
    """Each fold's record (see :func:`partition_files`) of a metadata + image combination: the
    fold's forest probabilities and its image's probabilities."""
    image = PAIRS[wildcards.combination]
    return [
        {
            "repeat": repeat,
            "fold": fold,
            "metadata": f"results/metadata/repeat{repeat}/fold{fold}/probs.tsv",
            "image": f"results/image/{image}/repeat{repeat}/fold{fold}/probs.tsv",
        }
        for repeat, fold in PARTITIONS
    ]


def report_figures(wildcards):
    """Figures and diagnostics the fusion_results target produces for this selection."""
    figures = ["results/plots/fold_kappa.png", "results/plots/confusion_matrices.png"]
    figures += [
        "results/plots/kappa_intervals.png",
        "results/plots/comparisons.png",
        "results/plots/reliability.png",
        "results/plots/roc_curves.png",
    ]
    figures += expand(
        "results/plots/learning_curves_{modality}.png", modality=MODALITIES
    )
    figures += expand("results/plots/weight_sweep_{combination}.png", combination=PAIRS)
    figures += expand(
        "results/diagnostics/{combination}/branch_agreement.tsv", combination=PAIRS
    )
    return figures


def ablation_fold_files(wildcards):
    """Each fold's record of every metadata + image combination: ``combination``, ``repeat``,
    ``fold``, the ablation's metrics and probabilities, V3's fusion metrics and V3's pooled
    out-of-fold predictions.

    Evaluated only when the ablation is requested, which needs at least one such combination.
    """
    if not PAIRS:
        raise WorkflowError(
            "The ablation compares fusions of metadata with one image modality: add a "
            "combination such as [metadata, thermal_map] to 'combinations'"
        )
    return [
        {
            "combination": combination,
            "repeat": repeat,
            "fold": fold,
            "metrics": f"results/ablation/{combination}/{place}/metrics.tsv",
            "probs": f"results/ablation/{combination}/{place}/probs.tsv",
            "v3": f"results/fusion/{combination}/{place}/metrics.json",
            "v3_oof": f"results/fusion/{combination}/oof.tsv",
        }
        for combination in PAIRS
        for repeat, fold in PARTITIONS
        for place in [f"repeat{repeat}/fold{fold}"]
    ]


def spec_modalities():
    """Each modality in use: its layout and image settings, as the model spec records them."""
    return {m: {**layout, **MODALITY_SETTINGS[m]} for m, layout in MODALITIES.items()}


def bundle_inputs(wildcards):
    """The final models a bundle holds: the forest (when a combination uses metadata) and
    each modality's final checkpoint and sidecar."""
    inputs = {}
    if any("metadata" in members for members in COMBINATIONS.values()):
        inputs["forest"] = "results/final/metadata/model.skops"
    for modality in MODALITIES:
        inputs[f"{modality}_checkpoint"] = (
            f"results/final/image/{modality}/checkpoint.weights.h5"
        )
        inputs[f"{modality}_sidecar"] = (
            f"results/final/image/{modality}/checkpoint.json"
        )
        inputs[f"{modality}_probs"] = f"results/final/image/{modality}/probs.tsv"
    return inputs


DEFAULT_BUNDLE = "results/final/bundle"


def predict_bundle(wildcards=None):
    """The bundle predict applies: predict.bundle, or the one final_models builds."""
    return config["predict"]["bundle"] or DEFAULT_BUNDLE


def predict_bundle_input(wildcards):
    """The bundle as an input: left out when a given bundle has no manifest, so predict_table
    runs and says so in fusion-dag's own line (not a MissingInputException)."""
    bundle = predict_bundle()
    return {"bundle": bundle} if predict_spec(wildcards) else {}


def predict_spec(wildcards):
    """The model spec a new table is checked against before any model is loaded: a given
    bundle's manifest, or (for the bundle this run builds) the spec that bundle will hold, so a
    bad table fails before the final models are trained. Empty when a given bundle has no
    manifest (predict_table then names the problem)."""
    bundle = predict_bundle()
    if Path(bundle) == Path(DEFAULT_BUNDLE):
        return "results/final/model_spec.json"
    manifest = f"{bundle}/manifest.json"
    return manifest if Path(manifest).is_file() else []


def predict_samples(wildcards):
    """The new table to predict (predict.samples), required by the predict target."""
    samples = config["predict"]["samples"]
    if not samples:
        raise WorkflowError(
            "Invalid config key 'predict.samples': the predict target needs the new table, "
            "e.g. --config predict='{samples: new_visits.csv}'"
        )
    # A table that does not exist is left out, so predict_table names it in one line.
    return samples if Path(samples).exists() else []


def predict_image_tables(wildcards):
    """The new visits' image tables (predict.images) that exist, as inputs; one that does not
    is left out for predict_table to name in one line."""
    tables = config["predict"]["images"] or {}
    return {f"{m}_images": path for m, path in tables.items() if Path(path).exists()}


def predict_image_dir(wildcards):
    """The folder the new table's image paths are relative to (default: image_dir)."""
    return config["predict"]["image_dir"] or config["image_dir"]


# Combinations of several members: the ones with contributions and a member-drop table.
FUSIONS = {name: members for name, members in COMBINATIONS.items() if len(members) > 1}
# The combination whose visits misclassified in every repeat review.tsv lists.
REVIEW = review_combination(
    COMBINATIONS, config["evaluation"]["primary"], config["explain"]["review"]
)
# Each fold's fitted forest, whose permutation importance explain_importance measures.
IMPORTANCE_FOLD_FILES = partition_files(
    model="results/metadata/repeat{repeat}/fold{fold}/model.skops"
)


# Each fold of repeat 1 (every visit held out once) of an image modality, with the files its
# Grad-CAM heatmaps need: the checkpoint, its sidecar and the image stage's probabilities.
def heatmap_fold_files(wildcards):
    """Each fold of repeat 1 (every visit held out once) of an image modality, with the files
    its Grad-CAM heatmaps need: the checkpoint, its sidecar and the image stage's visit and
    view probabilities."""
    folder = f"results/image/{wildcards.modality}/repeat1"
    return [
        {
            "fold": fold,
            "checkpoint": f"{folder}/fold{fold}/checkpoint.weights.h5",
            "sidecar": f"{folder}/fold{fold}/checkpoint.json",
            "probs": f"{folder}/fold{fold}/probs.tsv",
            "view_probs": f"{folder}/fold{fold}/view_probs.tsv",
        }
        for fold in FOLDS
    ]


def explain_member_files(wildcards):
    """The fold records of the members of every fusion and of the review combination
    (contributions, member drops and review.tsv)."""
    return member_records(
        {m for ms in [*FUSIONS.values(), COMBINATIONS[REVIEW]] for m in ms}
    )


def explain_outputs(wildcards):
    """What the explain target writes for this selection: the forest's importance (when a
    combination uses metadata), contributions and member drops (no rows without a fusion),
    the review list and each image modality's heatmaps."""
    outputs = []
    if any("metadata" in members for members in COMBINATIONS.values()):
        outputs += ["results/explain/importance.tsv", "results/explain/importance.png"]
    outputs += [
        "results/explain/contributions.tsv",
        "results/explain/member_drop.tsv",
        "results/explain/review.tsv",
    ]
    outputs += expand("results/explain/heatmaps_{modality}.png", modality=MODALITIES)
    return outputs


def predict_explain_outputs(wildcards):
    """The predict target's explanations, when predict.explain is true."""
    if not config["predict"]["explain"]:
        return []
    return ["results/predict/contributions.tsv", "results/predict/heatmaps"]
