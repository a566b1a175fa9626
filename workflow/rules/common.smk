import re

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA_PATH = workflow.source_path("../schemas/config.schema.yaml")


def command_line_values(value, schema):
    """``value`` with strings parsed as YAML wherever the schema expects no string.

    Snakemake hands nested ``--config`` values over as text (``--config
    'fusion={metadata_weight: 0.6}'`` gives ``'0.6'``), so ``0.6``, ``0``, ``null`` or
    ``[[metadata]]`` are parsed the way a config file would have read them.
    """
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: command_line_values(
                item, properties.get(key, extra if isinstance(extra, dict) else {})
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [command_line_values(item, schema.get("items", {})) for item in value]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str) and types and "string" not in types:
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

    Default: metadata alone, each image alone, metadata + each image. Selection is a list so
    a --configfile can narrow it (Snakemake merges mappings but replaces lists).
    """
    modalities = list(config["modalities"])
    chosen = config["combinations"] or (
        [["metadata"]]
        + [[m] for m in modalities]
        + [["metadata", m] for m in modalities]
    )
    order = ["metadata"] + modalities
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


validate_config(config)
COMBINATIONS = selected_combinations(config)


def modality_column(name):
    """The table column holding a modality's image paths."""
    entry = config["modalities"][name]
    return entry if isinstance(entry, str) else entry["column"]


def modality_settings(name):
    """A modality's image settings: ``image_model`` with the modality's own overrides."""
    entry = config["modalities"][name]
    overrides = {} if isinstance(entry, str) else entry
    return {
        **config["image_model"],
        **{key: value for key, value in overrides.items() if key != "column"},
    }


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


def fusion_inputs(wildcards):
    """What a combination fuses: the fold's metadata probabilities (out-of-fold and in-sample,
    for fit_kappa) and, for each image member,
    its pretrained checkpoint (so fusion cannot run before the image stage), probabilities and
    image cache."""
    members = COMBINATIONS[wildcards.combination]
    repeat, fold = wildcards.repeat, wildcards.fold
    inputs = {}
    if "metadata" in members:
        inputs["metadata"] = f"results/metadata/repeat{repeat}/fold{fold}/probs.tsv"
        inputs["metadata_fit"] = (
            f"results/metadata/repeat{repeat}/fold{fold}/fit_probs.tsv"
        )
    for modality in members:
        if modality != "metadata":
            stage = f"results/image/{modality}/repeat{repeat}/fold{fold}"
            inputs[f"{modality}_checkpoint"] = f"{stage}/checkpoint.weights.h5"
            inputs[f"{modality}_sidecar"] = f"{stage}/checkpoint.json"
            inputs[f"{modality}_probs"] = f"{stage}/probs.tsv"
            inputs[f"{modality}_cache"] = f"results/prepared/images/{modality}.npy"
            inputs[f"{modality}_ids"] = f"results/prepared/images/{modality}.ids.tsv"
    return inputs


def fusion_settings(wildcards):
    """Only the settings this combination's fusion uses, so that changing one re-runs only the
    fusion jobs it affects: the metadata weight when metadata meets an image, and the batch
    size, TensorFlow intra-op threads and seed of the frozen image branches' inference.
    """
    members = COMBINATIONS[wildcards.combination]
    settings = {}
    if "metadata" in members and len(members) > 1:
        settings["metadata_weight"] = config["fusion"]["metadata_weight"]
    if any(member in MODALITIES for member in members):
        settings["batch_size"] = config["image_model"]["batch_size"]
        settings["intra_op_threads"] = config["image_model"]["intra_op_threads"]
        settings["seed"] = config["cv"]["seed"]
    return settings


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
