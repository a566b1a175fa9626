import itertools
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA_PATH = workflow.source_path("../schemas/config.schema.yaml")


def schema_branch(value, schema, root):
    """The part of ``schema`` that describes ``value``: ``$ref`` resolved against ``root``'s
    ``$defs``, and of ``oneOf`` alternatives the one for a mapping when ``value`` is one.
    """
    if "$ref" in schema:
        referenced = root["$defs"][schema["$ref"].split("/")[-1]]
        properties = {
            **referenced.get("properties", {}),
            **schema.get("properties", {}),
        }
        schema = {**referenced, **schema, "properties": properties}
    if "oneOf" in schema and isinstance(value, dict):
        for option in schema["oneOf"]:
            option = schema_branch(value, option, root)
            if option.get("type") == "object":
                return option
    return schema


def accepted_types(schema):
    """The JSON types a schema (or any of its ``oneOf`` alternatives) accepts."""
    types = schema.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    for allowed in [schema["const"]] if "const" in schema else schema.get("enum", []):
        types.add("string" if isinstance(allowed, str) else "number")
    for option in schema.get("oneOf", []):
        types |= accepted_types(option)
    return types


def command_line_values(value, schema, root=None):
    """``value`` with strings parsed as YAML wherever the schema expects no string.

    Snakemake hands nested ``--config`` values over as text (``--config
    'fusion={metadata_weight: 0.6}'`` gives ``'0.6'``), so ``0.6``, ``0``, ``null`` or
    ``[[metadata]]`` are parsed the way a config file would have read them. A text that
    parses to a string (``all``, ``frozen``) stays as it is.
    """
    root = schema if root is None else root
    schema = schema_branch(value, schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: command_line_values(
                item,
                properties.get(key, extra if isinstance(extra, dict) else {}),
                root,
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            command_line_values(item, schema.get("items", {}), root) for item in value
        ]
    types = accepted_types(schema)
    if isinstance(value, str) and types and types != {"string"}:
        parsed = yaml.safe_load(value)
        return value if isinstance(parsed, str) else parsed
    return value


def validate_config(config):
    """Check the merged config against the schema; fail with one line naming the key."""
    with open(SCHEMA_PATH) as handle:
        schema = yaml.safe_load(handle)
    config.update(command_line_values(dict(config), schema))
    try:
        validate(config, schema=SCHEMA_PATH)
    except WorkflowError as error:
        if not isinstance(error.__context__, ValidationError):
            raise
        cause = best_match(Draft202012Validator(schema).iter_errors(config))
        key = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
        raise WorkflowError(f"Invalid config key '{key}': {cause.message}") from None


def selected_combinations(config):
    """Name -> members of each combination to run, metadata first, images in config order.

    Default: metadata alone, each image alone, metadata + each image; ``all``: every non-empty
    subset of metadata and the modalities (31 for metadata and four modalities). Selection is
    a list so a --configfile can narrow it (Snakemake merges mappings but replaces lists).
    """
    modalities = list(config["modalities"])
    order = ["metadata"] + modalities
    if config["combinations"] == "all":
        chosen = [
            list(members)
            for size in range(1, len(order) + 1)
            for members in itertools.combinations(order, size)
        ]
    else:
        chosen = config["combinations"] or (
            [["metadata"]]
            + [[m] for m in modalities]
            + [["metadata", m] for m in modalities]
        )
    combinations = {}
    for members in chosen:
        unknown = [m for m in members if m not in order]
        if unknown:
            raise WorkflowError(
                f"Invalid config key 'combinations': {unknown} is neither 'metadata' nor a "
                f"modality in 'modalities' ({', '.join(modalities) or 'none'})"
            )
        ordered = sorted(members, key=order.index)
        combinations["+".join(ordered)] = ordered
    return combinations


def modality_settings(name):
    """A modality's image settings: ``image_model`` with the modality's own overrides.

    ``backbone_weights: none`` (the word) means no pretrained weights, like null.
    """
    entry = config["modalities"][name]
    overrides = {} if isinstance(entry, str) else entry
    settings = {
        **config["image_model"],
        **{key: value for key, value in overrides.items() if key != "column"},
    }
    if str(settings.get("backbone_weights")).lower() == "none":
        settings["backbone_weights"] = None
    return settings


def setting_key(name, key):
    """Where a modality's setting comes from, for error messages."""
    entry = config["modalities"][name]
    own = isinstance(entry, dict) and key in entry
    return f"modalities.{name}.{key}" if own else f"image_model.{key}"


def validate_image_settings(modalities):
    """Settings the schema cannot check alone, each error naming the key."""
    for name in modalities:
        settings = modality_settings(name)
        weights = settings["backbone_weights"]
        if settings["backbone"] == "small_cnn" and weights is not None:
            raise WorkflowError(
                f"Invalid config key '{setting_key(name, 'backbone_weights')}': {weights!r} "
                f"needs a keras.applications backbone; modality {name} uses small_cnn, which "
                "has no pretrained weights (set backbone_weights: null)"
            )
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            raise WorkflowError(
                f"Invalid config key '{setting_key(name, 'backbone_weights')}': {weights} is "
                "not a file (give imagenet, null, or the path of a Keras .weights.h5 file of "
                f"{settings['backbone']} built with include_top=False)"
            )
        if settings["size"] < 32 and settings["backbone"] != "small_cnn":
            raise WorkflowError(
                f"Invalid config key '{setting_key(name, 'size')}': {settings['size']} px is "
                f"below the 32 px keras.applications backbones ({settings['backbone']}) accept"
            )


def validate_fusion_weights(combinations):
    """``fusion.weights``, when given: one weight per member in use, summing to 1."""
    weights = config["fusion"].get("weights")
    if not weights:
        return
    used = sorted({member for members in combinations.values() for member in members})
    missing = [member for member in used if member not in weights]
    unknown = [
        member
        for member in weights
        if member not in ["metadata", *config["modalities"]]
    ]
    if missing or unknown:
        raise WorkflowError(
            f"Invalid config key 'fusion.weights': members without a weight {missing}, "
            f"names that are neither metadata nor a modality {unknown}"
        )
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise WorkflowError(
            f"Invalid config key 'fusion.weights': the weights sum to {total:g}, not 1"
        )
    for name, members in combinations.items():
        if sum(weights[m] for m in members) <= 0:
            raise WorkflowError(
                f"Invalid config key 'fusion.weights': combination {name} has total weight 0"
            )


validate_config(config)
COMBINATIONS = selected_combinations(config)
validate_fusion_weights(COMBINATIONS)


def modality_column(name):
    """The table column holding a modality's image paths."""
    entry = config["modalities"][name]
    return entry if isinstance(entry, str) else entry["column"]


def image_setting(key):
    """A params function: one setting of the job's modality, so that the rule re-runs only
    when that setting changes."""
    return lambda wildcards: modality_settings(wildcards.modality)[key]


# Modalities some selected combination uses: only these are read, validated and trained.
MODALITIES = {
    name: modality_column(name)
    for name in config["modalities"]
    if any(name in members for members in COMBINATIONS.values())
}
validate_image_settings(MODALITIES)
# Path columns of configured modalities not in use: never metadata features either.
IGNORED_IMAGE_COLUMNS = sorted(
    {modality_column(name) for name in config["modalities"]} - set(MODALITIES.values())
)
REPEATS = list(range(1, config["cv"]["repeats"] + 1))
FOLDS = list(range(1, config["cv"]["folds"] + 1))
# (repeat, fold) of every partition's fold, in the order expand() lists their files.
PARTITIONS = [(repeat, fold) for repeat in REPEATS for fold in FOLDS]
# Combinations of metadata with exactly one image: the ones diagnostics and the ablation study.
PAIRS = {
    name: members[1]
    for name, members in COMBINATIONS.items()
    if len(members) == 2 and members[0] == "metadata"
}
DEMO_TABLE = "resources/demo/samples.csv"


wildcard_constraints:
    repeat=r"\d+",
    fold=r"\d+",
    combination="|".join(re.escape(name) for name in COMBINATIONS),
    modality="|".join(re.escape(name) for name in MODALITIES) or "(?!)",


def partition_seed(wildcards):
    """The seed of one repeat's partition: cv.seed for repeat 1, then cv.seed + 1, ..."""
    return config["cv"]["seed"] + int(wildcards.repeat) - 1


def combination_inputs(members, metadata, stage):
    """What a combination fuses: the metadata probabilities ``metadata`` (name -> file) and, for
    each image member, its pretrained checkpoint and sidecar (so fusion cannot run before the
    image stage), its probabilities and, when it meets another member, its image cache.
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
                inputs[f"{modality}_cache"] = f"results/prepared/images/{modality}.npy"
                inputs[f"{modality}_ids"] = (
                    f"results/prepared/images/{modality}.ids.tsv"
                )
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
            m: {key: modality_settings(m)[key] for key in BRANCH_KEYS} for m in images
        }
    if len(members) > 1 and images:
        settings["batch_size"] = config["image_model"]["batch_size"]
        settings["intra_op_threads"] = config["image_model"]["intra_op_threads"]
        settings["seed"] = config["cv"]["seed"]
    return settings


def backbone_weights_input(modality):
    """An input function: a modality's pretrained backbone file, when it is a path, so a new
    file re-runs the jobs that train that modality's branch (image stage, ablation)."""

    def inputs(wildcards):
        name = modality(wildcards)
        weights = modality_settings(name)["backbone_weights"]
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


def diagnostic_image_probs(wildcards):
    """Every fold's image probabilities for the image in a metadata + image combination."""
    return expand(
        "results/image/{modality}/repeat{repeat}/fold{fold}/probs.tsv",
        modality=PAIRS[wildcards.combination],
        repeat=REPEATS,
        fold=FOLDS,
    )


def report_figures(wildcards):
    """Figures and diagnostics the fusion_results target produces for this selection."""
    figures = ["results/plots/fold_kappa.png", "results/plots/confusion_matrices.png"]
    figures += [
        "results/plots/kappa_intervals.png",
        "results/plots/comparisons.png",
        "results/plots/reliability.png",
    ]
    figures += expand(
        "results/plots/learning_curves_{modality}.png", modality=MODALITIES
    )
    figures += expand("results/plots/weight_sweep_{combination}.png", combination=PAIRS)
    figures += expand(
        "results/diagnostics/{combination}/branch_agreement.tsv", combination=PAIRS
    )
    return figures


def ablation_inputs(pattern):
    """An input function: every fold of every metadata + image combination.

    Evaluated only when the ablation is requested, which needs at least one such combination.
    """

    def inputs(wildcards):
        if not PAIRS:
            raise WorkflowError(
                "The ablation compares fusions of metadata with one image modality: add a "
                "combination such as [metadata, thermal_map] to 'combinations'"
            )
        return expand(pattern, combination=PAIRS, repeat=REPEATS, fold=FOLDS)

    return inputs


def image_dir(wildcards):
    """The folder image paths are relative to.

    A parameter rather than an input: prepare checks each image the table names, and the
    workflow assumes a file system shared by all jobs (as on a SLURM cluster).
    """
    return config["image_dir"]


def spec_modalities():
    """Each modality in use: its path column and image settings, as the model spec records."""
    return {
        m: {"column": column, **modality_settings(m)}
        for m, column in MODALITIES.items()
    }


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
    return inputs


DEFAULT_BUNDLE = "results/final/bundle"


def predict_bundle(wildcards):
    """The bundle predict applies: predict.bundle, or the one final_models builds."""
    return config["predict"]["bundle"] or DEFAULT_BUNDLE


def predict_spec(wildcards):
    """The model spec a new table is checked against before any model is loaded: a given
    bundle's manifest, or (for the bundle this run builds) the spec that bundle will hold, so a
    bad table fails before the final models are trained."""
    bundle = predict_bundle(wildcards)
    if Path(bundle) == Path(DEFAULT_BUNDLE):
        return "results/final/model_spec.json"
    return f"{bundle}/manifest.json"


def predict_samples(wildcards):
    """The new table to predict (predict.samples), required by the predict target."""
    samples = config["predict"]["samples"]
    if not samples:
        raise WorkflowError(
            "Invalid config key 'predict.samples': the predict target needs the new table, "
            "e.g. --config predict='{samples: new_visits.csv}'"
        )
    return samples


def predict_image_dir(wildcards):
    """The folder the new table's image paths are relative to (default: image_dir)."""
    return config["predict"]["image_dir"] or config["image_dir"]
