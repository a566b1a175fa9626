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
DEMO_TABLE = "resources/demo/samples.csv"


wildcard_constraints:
    fold=r"\d+",
    combination="|".join(re.escape(name) for name in COMBINATIONS),
    modality="|".join(re.escape(name) for name in MODALITIES) or "(?!)",


def fusion_inputs(wildcards):
    """The probability tables a combination fuses (image members arrive with the image rule)."""
    members = COMBINATIONS[wildcards.combination]
    inputs = {}
    if "metadata" in members:
        inputs["metadata"] = f"results/metadata/fold{wildcards.fold}/probs.tsv"
    return inputs


def fusion_weights(wildcards):
    """Only the weights this combination uses, so a weight change re-runs only fusions it affects."""
    members = COMBINATIONS[wildcards.combination]
    if "metadata" in members and len(members) > 1:
        return {"metadata_weight": config["fusion"]["metadata_weight"]}
    return {}


def image_dir(wildcards):
    """The folder image paths are relative to.

    A parameter rather than an input: prepare checks each image the table names, and the
    workflow assumes a file system shared by all jobs (as on a SLURM cluster).
    """
    return config["image_dir"]
