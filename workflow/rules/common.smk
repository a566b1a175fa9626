import re
import sys
from pathlib import Path

from jsonschema.exceptions import ValidationError
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

# The package, from the folder the rule scripts import it from (this file's ../scripts, also
# when the workflow is used as a module from another folder).
RULES_FOLDER = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
sys.path.insert(0, str(RULES_FOLDER.parent / "scripts"))
from fusion_dag import jobs
from fusion_dag.artifacts import InputError
from fusion_dag.card import card_sources
from fusion_dag.folds import check_table_folds
from fusion_dag.tables import read_table
from fusion_dag.config import (
    ConfigError,
    class_names,
    check_columns,
    check_fusion_weights,
    check_primary,
    check_review,
    check_decisions,
    check_subgroups,
    check_temporal,
    check_image_settings,
    check_layouts,
    command_line_values,
    load_schema,
    modalities_in_use,
    modality_settings,
    predict_image_dirs,
    review_combination,
    schema_error,
    selected_combinations,
)
from fusion_dag.plan import analysis_plan, plan_changes, recorded_plan

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
    check_primary(config, COMBINATIONS)
    check_review(config, COMBINATIONS)
    check_decisions(config)
    # Modalities some selected combination uses: only these are read, validated and trained.
    MODALITIES = modalities_in_use(config, COMBINATIONS)
    check_image_settings(config, MODALITIES)
    # The folders a new table's image paths are relative to (predict.image_dir, or as training).
    PREDICT_IMAGE_DIRS = predict_image_dirs(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


def readable_samples():
    """The samples table as read at start-up, or None when it cannot be read this far (left to
    the prepare job, which names the problem). Read once for every start-up check."""
    try:
        return read_table(Path(config["samples"]), config["na_values"])
    except InputError:
        return None


# Settings that cannot work with the data, before any job runs (the demo table, made by a job,
# is checked by the folds job and, for evaluation.subgroups, by the clinical_report job).
if Path(config["samples"]).is_file():
    SAMPLES_AT_START = readable_samples()
    try:
        check_table_folds(
            config["samples"],
            config["columns"],
            config["classes"],
            config["cv"]["folds"],
            config["na_values"],
            table=SAMPLES_AT_START,
        )
        if SAMPLES_AT_START is not None:
            check_subgroups(config, SAMPLES_AT_START.columns)
            check_temporal(config, SAMPLES_AT_START.columns)
    except (InputError, ConfigError) as error:
        raise WorkflowError(str(error)) from None
# The analysis plan this config fixes (rules/plan.smk writes it before any model is trained).
ANALYSIS_PLAN_FILE = "results/analysis_plan.json"
ANALYSIS_PLAN = analysis_plan(config, COMBINATIONS)


def warn_of_a_changed_plan():
    """A WARNING at start when this config's plan differs from the one on record in results/
    (read only: the analysis_plan job replaces it and keeps the earlier one)."""
    try:
        on_record = recorded_plan(ANALYSIS_PLAN_FILE)
    except InputError as error:
        raise WorkflowError(str(error)) from None
    if on_record is not None and on_record["plan"] != ANALYSIS_PLAN:
        changes = "\n  ".join(plan_changes(on_record["plan"], ANALYSIS_PLAN))
        logger.warning(
            f"WARNING: the analysis plan differs from {ANALYSIS_PLAN_FILE} (written "
            f"{on_record['written']}); this run replaces it, keeps the earlier plan in the "
            f"file and says so on the report's front page:\n  {changes}"
        )


warn_of_a_changed_plan()
# Each configured modality's image settings (image_model with its own overrides).
MODALITY_SETTINGS = {
    name: modality_settings(config, name) for name in config["modalities"]
}
# Modalities in use whose head trains on the backbone's cached features (rule features).
FEATURE_MODALITIES = jobs.feature_modalities(config, MODALITIES)
REPEATS = list(range(1, config["cv"]["repeats"] + 1))
FOLDS = list(range(1, config["cv"]["folds"] + 1))
# Combinations of metadata with exactly one image: the ones diagnostics and the ablation study.
PAIRS = jobs.pairs(COMBINATIONS)
DEMO_TABLE = "resources/demo/samples.csv"
# Image tables the demo_data rule writes.
DEMO_IMAGE_TABLES = [Path("resources/demo/thermal_images.csv")]
# The demo's later patients (demo.new_patients) and their thermal views: the README predicts
# them with the bundle trained on the demo table, which never saw them.
DEMO_NEW_TABLE = "resources/demo/new_samples.csv"
DEMO_NEW_IMAGE_TABLE = "resources/demo/new_thermal_images.csv"
# The report's front page, written with the headline: the run's verdicts and tables.
FRONT_PAGE = "results/report/front_page.rst"
# The bundle final_models builds, and predict applies unless predict.bundle names another.
DEFAULT_BUNDLE = "results/final/bundle"
# Combinations of several members: the ones with contributions and a member-drop table.
FUSIONS = jobs.fusions(COMBINATIONS)
# The combination whose visits misclassified in every repeat review.tsv lists.
REVIEW = review_combination(
    COMBINATIONS, config["evaluation"]["primary"], config["explain"]["review"]
)


wildcard_constraints:
    repeat=r"\d+",
    fold=r"\d+",
    combination="|".join(re.escape(name) for name in COMBINATIONS),
    modality="|".join(re.escape(name) for name in MODALITIES) or "(?!)",


# Thin wrappers of fusion_dag.jobs: each job's settings and inputs from its wildcards.
def repeat_seed(wildcards):
    """The seed of the job's repeat (cv.seed for the final models, outside every repeat)."""
    return jobs.repeat_seed(config, int(getattr(wildcards, "repeat", 1)))


def fusion_settings(wildcards):
    """Only the settings the job's combination's fusion uses (see jobs.fusion_settings)."""
    members = COMBINATIONS[wildcards.combination]
    return jobs.fusion_settings(config, members, repeat_seed(wildcards))


def pair_weight_settings(wildcards):
    """The member weights of a metadata + image combination (diagnostics, ablation)."""
    return jobs.weight_settings(config, COMBINATIONS[wildcards.combination])


def feature_inputs(wildcards):
    """An image job's feature cache, when its modality has one."""
    return jobs.feature_files(config, wildcards.modality)


def backbone_weights_input(modality):
    """An input function: the pretrained backbone file of the modality ``modality(wildcards)``
    names, when it is a path, so a new file re-runs the jobs that train its branch."""
    return lambda wildcards: jobs.backbone_weights_file(config, modality(wildcards))


def partition_files(**patterns):
    """A params function: one record per partition's fold, with its ``repeat``, ``fold`` and
    each named pattern's file (see jobs.partition_records)."""
    return lambda wildcards: jobs.partition_records(
        config, dict(wildcards.items()), patterns
    )


def files_of(records, key):
    """An input function: the ``key`` file of each record of ``records`` (a params function
    of fold records), so a rule's inputs and its records are one list."""
    return lambda wildcards: [record[key] for record in records(wildcards)]


def image_setting(key):
    """A params function: one setting of the job's modality, so that the rule re-runs only
    when that setting changes."""
    return lambda wildcards: MODALITY_SETTINGS[wildcards.modality][key]


def samples_input(wildcards):
    """The samples table, as an input, when it exists (or the demo rule makes it).

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


def screen_input(wildcards):
    """The fold's screened training visits, with label_screen (see jobs.screen_file)."""
    return jobs.screen_file(config, wildcards.repeat, wildcards.fold)


def fusion_inputs(wildcards):
    """A fold's fusion inputs: the fold's metadata probabilities and image stages."""
    members = COMBINATIONS[wildcards.combination]
    return jobs.fold_fusion_inputs(config, members, wildcards.repeat, wildcards.fold)


# The fold records that rules gather every fold by: params of the rule and, through
# files_of, its inputs.
def member_fold_files(wildcards):
    """Every fusion member's fold records, from which aggregate_results scores every visit
    with the members it has (the headline's ``rows: all``), as predict does."""
    return jobs.member_records(config, jobs.fusion_members(COMBINATIONS))


def image_metric_files(wildcards):
    """Every image member's fold metrics, from which aggregate_results counts the folds whose
    branch learned nothing (the headline's folds_not_learned)."""
    return jobs.image_stage_records(config, COMBINATIONS)


def explain_member_files(wildcards):
    """The fold records of the members of every fusion and of the review combination
    (contributions, member drops and review.tsv)."""
    members = {*jobs.fusion_members(COMBINATIONS), *COMBINATIONS[REVIEW]}
    return jobs.member_records(config, members)


def diagnostic_fold_files(wildcards):
    """Each fold's forest and image probabilities of a metadata + image combination."""
    return jobs.diagnostic_records(config, PAIRS[wildcards.combination])


def heatmap_fold_files(wildcards):
    """Each fold of repeat 1 of the image modality, with the files its Grad-CAM heatmaps
    need."""
    return jobs.heatmap_records(config, wildcards.modality)


def ablation_fold_files(wildcards):
    """Each fold's record of every metadata + image combination (see jobs.ablation_records).

    Evaluated only when the ablation is requested, which needs at least one such combination.
    """
    if not PAIRS:
        raise WorkflowError(
            "The ablation compares fusions of metadata with one image modality: add a "
            "combination such as [metadata, thermal_map] to 'combinations'"
        )
    return jobs.ablation_records(config, PAIRS)


def protocol_member_files(wildcards):
    """Each fold's stage probabilities of every member of every combination, which the
    protocol fuses (see jobs.member_records).

    Evaluated only when the protocol is requested; its rows are defined against a run whose
    stages trained on every training visit, so label_screen is refused."""
    if config.get("label_screen"):
        raise WorkflowError(
            "Invalid config key 'label_screen': the protocol target screens in its own jobs "
            "and compares against the unscreened stages; run it with label_screen: null"
        )
    members = {m for members in COMBINATIONS.values() for m in members}
    return jobs.member_records(config, members)


def protocol_screen_files(wildcards):
    """Each repeat's protocol_screen outputs (see jobs.protocol_screen_records)."""
    return jobs.protocol_screen_records(config, COMBINATIONS)


def temporal_table_input(wildcards):
    """The samples table the temporal split orders patients by (its column may be one the
    forest leaves out); the temporal target needs evaluation.temporal."""
    if not config["evaluation"]["temporal"]:
        raise WorkflowError(
            "Invalid config key 'evaluation.temporal': the temporal target needs it, e.g. "
            "--config evaluation='{temporal: {column: visit_date, test: 0.3}}' (column null: "
            "the patients' order in the table)"
        )
    return samples_input(wildcards)


def card_options(wildcards):
    """The model card's optional inputs: the subgroup table when evaluation.subgroups names
    columns (without, it is a header only), the temporal table with evaluation.temporal.
    """
    options = {}
    if config["evaluation"]["subgroups"]:
        options["subgroups"] = "results/report/subgroups.tsv"
    if config["evaluation"]["temporal"]:
        options["temporal"] = "results/temporal.tsv"
    return options


def front_page_output():
    """aggregate_results' front page output, or none with evaluation.temporal, when the
    front_page rule writes the page after the temporal table."""
    return {} if config["evaluation"]["temporal"] else {"front_page": FRONT_PAGE}


def predict_bundle():
    """The bundle predict applies: predict.bundle, or the one final_models builds."""
    return config["predict"]["bundle"] or DEFAULT_BUNDLE


def predict_card_copy(wildcards):
    """The card's copy beside the predictions (rule predict_card) as an input of the predict
    target when this invocation also builds the run's own card: the bundle is the default one
    and a target given on the command line (Snakemake's DAG settings, set before any input
    function runs) is final_models, all or the card. Otherwise none: predictions copies the
    card it finds."""
    if Path(predict_bundle()) != Path(DEFAULT_BUNDLE):
        return []
    card = rules.model_card.output
    wanted = {"final_models", "all", "model_card", *(str(Path(path)) for path in card)}
    given = workflow.dag_settings.targets if workflow.dag_settings else ()
    targets = {str(Path(target)) for target in given}
    return rules.predict_card.output if targets & wanted else []


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


def predict_bundle_input(wildcards):
    """The bundle as an input: left out when a given bundle has no manifest, so predict_table
    runs and says so in fusion-dag's own line (not a MissingInputException)."""
    return {"bundle": predict_bundle()} if predict_spec(wildcards) else {}


def predict_samples(wildcards):
    """The new table to predict (predict.samples), required by the predict target."""
    samples = config["predict"]["samples"]
    if not samples:
        raise WorkflowError(
            "Invalid config key 'predict.samples': the predict target needs the new table, "
            "e.g. --config predict='{samples: new_visits.csv}'"
        )
    # A table that does not exist is left out, so predict_table names it in one line (the
    # demo's new patients are an input: rule demo_data writes them).
    demo = Path(samples).resolve() == Path(DEMO_NEW_TABLE).resolve()
    return samples if demo or Path(samples).exists() else []


def predict_image_tables(wildcards):
    """The new visits' image tables (predict.images) that exist, as inputs; one that does not
    is left out for predict_table to name in one line."""
    tables = config["predict"]["images"] or {}
    demo = Path(DEMO_NEW_IMAGE_TABLE).resolve()
    return {
        f"{m}_images": path
        for m, path in tables.items()
        if Path(path).resolve() == demo or Path(path).exists()
    }


# The report the Snakefile declares.
def report_front_page():
    """The page the report opens on: the run's front page (verdicts and headline first) once
    aggregate_results has written it, else the workflow's description."""
    page = Path(FRONT_PAGE)
    return str(page.resolve()) if page.is_file() else "report/workflow.rst"
