import re

from jsonschema.exceptions import ValidationError
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def validate_config(config):
    """Check the merged config against the schema; fail with one line naming the key."""
    try:
        validate(config, schema="../config/schema.yaml")
    except WorkflowError as error:
        cause = error.__context__
        if not isinstance(cause, ValidationError):
            raise
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
MODALITIES = {
    name: column
    for name, column in config["modalities"].items()
    if any(name in members for members in COMBINATIONS.values())
}
FOLDS = list(range(1, config["cv"]["folds"] + 1))
# Combinations of metadata with exactly one image: the ones diagnostics and the ablation study.
PAIRS = {
    name: members[1]
    for name, members in COMBINATIONS.items()
    if len(members) == 2 and members[0] == "metadata"
}
DEMO_TABLE = "resources/demo/samples.csv"


wildcard_constraints:
    fold=r"\d+",
    combination="|".join(re.escape(name) for name in COMBINATIONS),
    modality="|".join(re.escape(name) for name in MODALITIES) or "(?!)",


def fusion_inputs(wildcards):
    """What a combination fuses: the fold's metadata probabilities and, for each image member,
    its pretrained checkpoint (so fusion cannot run before the image stage), probabilities and
    image cache."""
    members = COMBINATIONS[wildcards.combination]
    fold = wildcards.fold
    inputs = {}
    if "metadata" in members:
        inputs["metadata"] = f"results/metadata/fold{fold}/probs.tsv"
    for modality in members:
        if modality != "metadata":
            stage = f"results/image/{modality}/fold{fold}"
            inputs[f"{modality}_checkpoint"] = f"{stage}/checkpoint.weights.h5"
            inputs[f"{modality}_sidecar"] = f"{stage}/checkpoint.json"
            inputs[f"{modality}_probs"] = f"{stage}/probs.tsv"
            inputs[f"{modality}_cache"] = f"results/prepared/images/{modality}.npy"
            inputs[f"{modality}_ids"] = f"results/prepared/images/{modality}.ids.tsv"
    return inputs


def fusion_settings(wildcards):
    """Only the settings this combination's fusion uses, so that changing one re-runs only the
    fusion jobs it affects: the metadata weight when metadata meets an image, and the batch
    size and seed of the frozen image branches' inference."""
    members = COMBINATIONS[wildcards.combination]
    settings = {}
    if "metadata" in members and len(members) > 1:
        settings["metadata_weight"] = config["fusion"]["metadata_weight"]
    if any(member in MODALITIES for member in members):
        settings["batch_size"] = config["image_model"]["batch_size"]
        settings["seed"] = config["cv"]["seed"]
    return settings


def trained_models(wildcards):
    """Every fold's trained models, which the fusion_results target requires.

    Snakemake does not rebuild a missing intermediate file whose consumers are up to date, but
    it does rebuild a missing input of a target rule that has no outputs of its own.
    """
    models = expand(
        "results/image/{modality}/fold{fold}/checkpoint.weights.h5",
        modality=MODALITIES,
        fold=FOLDS,
    )
    if any("metadata" in members for members in COMBINATIONS.values()):
        models += expand("results/metadata/fold{fold}/model.skops", fold=FOLDS)
    return models


def diagnostic_image_probs(wildcards):
    """Every fold's image probabilities for the image in a metadata + image combination."""
    return expand(
        "results/image/{modality}/fold{fold}/probs.tsv",
        modality=PAIRS[wildcards.combination],
        fold=FOLDS,
    )


def report_figures(wildcards):
    """Figures and diagnostics the fusion_results target produces for this selection."""
    figures = ["results/plots/fold_kappa.png", "results/plots/confusion_matrices.png"]
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
        return expand(pattern, combination=PAIRS, fold=FOLDS)

    return inputs


def job_resources(rule_name):
    """Threads, mem_mb and runtime for a rule: its `resources` entry over the default."""
    settings = config["resources"]
    return {**settings["default"], **settings.get(rule_name, {})}


def image_dir(wildcards):
    """The folder image paths are relative to.

    A parameter rather than an input: prepare checks each image the table names, and the
    workflow assumes a file system shared by all jobs (as on a SLURM cluster).
    """
    return config["image_dir"]
