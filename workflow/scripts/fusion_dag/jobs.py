"""What each job is given: its params (the settings it trains with) and the files and fold
records it gathers.

Why a package module rather than functions in ``common.smk``: these decide what every job
trains and, because Snakemake re-runs a job whose params change, which jobs a changed setting
re-runs. As plain functions of the config dict and plain values (member lists, modality names,
repeat numbers) they are unit tested on small configs; ``common.smk`` and the rule files wrap
each in a one-line function of the job's wildcards. :mod:`fusion_dag.config` validates the
config these functions read.
"""

from fusion_dag.config import modality_column, modality_settings
from fusion_dag.features import FLIP_ONLY, flips, no_cache_reason
from fusion_dag.weights import METADATA, member_weights

# The settings a branch is rebuilt from in fusion (size and channels come from the cache):
# its architecture, and so its layers, whose names the checkpoint is loaded by. ``standardize``
# and ``batch_norm`` add small_cnn layers and ``pooling`` chooses its last one; absent from a
# config, the branch is built as before them (fusion_dag.branch.BRANCH_DEFAULTS), as the image
# stage built it. Training-only settings
# (epochs, patience, warmup_epochs, reduce_lr_patience, ...) are not here: changing one re-runs
# the image stage, and through its checkpoint the fusion, but is not a fusion param.
BRANCH_KEYS = [
    "backbone",
    "augmentation",
    "mixed_precision",
    "standardize",
    "batch_norm",
    "pooling",
]


def partitions(config: dict) -> list:
    """(repeat, fold) of every partition's fold, repeat by repeat, both numbered from 1."""
    return [
        (repeat, fold)
        for repeat in range(1, config["cv"]["repeats"] + 1)
        for fold in range(1, config["cv"]["folds"] + 1)
    ]


def repeat_seed(config: dict, repeat: int = 1) -> int:
    """The seed of one repeat: cv.seed for repeat 1, then cv.seed + 1, ...; it seeds the
    repeat's partition and every model in it (forest, inner splits, TensorFlow, early-stopping
    split), so repeats vary the models' randomness as well as the partition. The partitions
    outside every repeat (repeat 0: the final models, the temporal split) use cv.seed, as
    repeat 1 does."""
    return config["cv"]["seed"] + max(repeat, 1) - 1


def uses_metadata(combinations: dict) -> bool:
    """Whether some combination has the metadata member, so the forest is trained at all."""
    return any(METADATA in members for members in combinations.values())


def pairs(combinations: dict) -> dict:
    """Name -> image of each combination of metadata with exactly one image: the ones the
    diagnostics and the ablation study compare."""
    return {
        name: members[1]
        for name, members in combinations.items()
        if len(members) == 2 and members[0] == METADATA
    }


def fusions(combinations: dict) -> dict:
    """The combinations of several members: the ones with contributions and member drops."""
    return {name: members for name, members in combinations.items() if len(members) > 1}


def fusion_members(combinations: dict) -> set:
    """Every member of a combination of several members (what a fused visit may be scored
    from when it lacks a member)."""
    return {member for members in fusions(combinations).values() for member in members}


def feature_modalities(config: dict, modalities) -> list:
    """Those of ``modalities`` whose head trains on the backbone's cached features."""
    return [name for name in modalities if no_cache_reason(modality_settings(config, name)) is None]


def ignored_image_columns(config: dict, modalities: dict) -> list:
    """Path columns of configured modalities not in use (``modalities``: the ones in use,
    name -> layout), sorted: never metadata features either."""
    return sorted(
        {modality_column(config, name) for name in config["modalities"]}
        - {layout.get("column") for layout in modalities.values()}
        - {None}
    )


def feature_settings(config: dict, modality: str) -> dict:
    """What a modality's feature cache depends on besides its image cache: the backbone, its
    weights source, whether flips are cached, TensorFlow's intra-op threads and, for a seeded
    random initialisation only, the seed. No fold setting (epochs, batch size, learning rate,
    patience, cv.repeats, fusion weights) is among them, so none re-runs the features.
    """
    settings = modality_settings(config, modality)
    random_weights = settings["backbone_weights"] is None
    return {
        "backbone": settings["backbone"],
        "backbone_weights": settings["backbone_weights"],
        "augmentation": FLIP_ONLY if flips(settings) else None,
        "intra_op_threads": settings["intra_op_threads"],
        "seed": config["cv"]["seed"] if random_weights else None,
    }


def feature_files(config: dict, modality: str, prefix: str = "") -> dict:
    """A modality's feature cache files as inputs named ``{prefix}features``,
    ``{prefix}features_sidecar`` and ``{prefix}features_backbone``; none when its branch trains
    on pixels."""
    if no_cache_reason(modality_settings(config, modality)) is not None:
        return {}
    folder = f"results/features/{modality}"
    return {
        f"{prefix}features": f"{folder}/features.npy",
        f"{prefix}features_sidecar": f"{folder}/features.json",
        f"{prefix}features_backbone": f"{folder}/backbone.weights.h5",
    }


def backbone_weights_file(config: dict, modality: str) -> dict:
    """A modality's pretrained backbone file as an input named ``backbone_weights``, when it is
    a path, so a new file re-runs the jobs that train that modality's branch."""
    weights = modality_settings(config, modality)["backbone_weights"]
    return {} if weights in (None, "imagenet") else {"backbone_weights": weights}


def weight_settings(config: dict, members: list) -> dict:
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
    if METADATA in members:
        return {"metadata_weight": config["fusion"]["metadata_weight"]}
    return {}


def branch_settings(config: dict, modality: str) -> dict:
    """The modality's :data:`BRANCH_KEYS` that its config sets: what fusion rebuilds the
    branch from, layer for layer, before loading the image stage's checkpoint into it."""
    settings = modality_settings(config, modality)
    return {key: settings[key] for key in BRANCH_KEYS if key in settings}


def fusion_settings(config: dict, members: list, seed: int) -> dict:
    """Only the settings a combination's fusion uses, so that changing one re-runs only the
    fusion jobs it affects: the member weights, each image member's branch architecture
    (:data:`BRANCH_KEYS`), and the batch size, TensorFlow intra-op threads and ``seed`` of the
    frozen branches' inference (none for an image alone, whose probabilities are the image
    stage's).
    """
    settings = {"weights": weight_settings(config, members)}
    images = [member for member in members if member != METADATA]
    if images:
        settings["branches"] = {image: branch_settings(config, image) for image in images}
    if len(members) > 1 and images:
        settings["batch_size"] = config["image_model"]["batch_size"]
        settings["intra_op_threads"] = config["image_model"]["intra_op_threads"]
        settings["seed"] = seed
    settings.update(learn_settings(config, members, seed))
    return settings


def learn_settings(config: dict, members: list, seed: int) -> dict:
    """With ``fusion.learn``: what it learns (``learn``) and, per image member, the
    ``validation_fraction`` and ``seed`` its image stage drew the early-stopping visits with
    (``image_split``), which the fusion job learns on (:mod:`fusion_dag.learn`). Nothing
    without it, so the fixed-weight jobs' params stay as they were."""
    learn = config["fusion"].get("learn") or []
    if not learn:
        return {}
    split = {
        member: {
            "validation_fraction": modality_settings(config, member)["validation_fraction"],
            "seed": seed,
        }
        for member in members
        if member != METADATA
    }
    return {"learn": list(learn), "image_split": split}


def combination_inputs(config: dict, members: list, metadata: dict, stage) -> dict:
    """What a combination fuses: the metadata probabilities ``metadata`` (name -> file) and, for
    each image member, its pretrained checkpoint and sidecar (so fusion cannot run before the
    image stage), its probabilities and, when it meets another member, its per-view
    probabilities and its image cache with the cache's views and feature cache.
    ``stage(modality)`` is the folder of that member's image stage."""
    inputs = dict(metadata) if METADATA in members else {}
    for modality in members:
        if modality != METADATA:
            inputs[f"{modality}_checkpoint"] = f"{stage(modality)}/checkpoint.weights.h5"
            inputs[f"{modality}_sidecar"] = f"{stage(modality)}/checkpoint.json"
            inputs[f"{modality}_probs"] = f"{stage(modality)}/probs.tsv"
            if len(members) > 1:
                inputs[f"{modality}_view_probs"] = f"{stage(modality)}/view_probs.tsv"
                inputs[f"{modality}_cache"] = f"results/prepared/images/{modality}.npy"
                inputs[f"{modality}_views"] = f"results/prepared/{modality}_views.tsv"
                inputs.update(feature_files(config, modality, prefix=f"{modality}_"))
    return inputs


def fold_fusion_inputs(config: dict, members: list, repeat, fold) -> dict:
    """A fold's fusion inputs: the fold's metadata probabilities (out-of-fold and in-sample,
    for fit_kappa) and the fold's image stages."""
    place = f"repeat{repeat}/fold{fold}"
    metadata = {
        "metadata": f"results/metadata/{place}/probs.tsv",
        "metadata_fit": f"results/metadata/{place}/fit_probs.tsv",
    }
    inputs = combination_inputs(
        config, members, metadata, lambda modality: f"results/image/{modality}/{place}"
    )
    if config["fusion"].get("learn"):
        # The labels and partition the choosing visits are drawn from (fusion_dag.learn).
        inputs["folds"] = f"results/folds/repeat{repeat}.tsv"
        inputs.update(screen_file(config, repeat, fold))
    return inputs


def final_fusion_inputs(config: dict, members: list) -> dict:
    """The final fusion's inputs: the final forest's and final branches' outputs, and with
    ``fusion.learn`` the forest's inner out-of-fold probabilities it learns on."""
    metadata = {"metadata": "results/final/metadata/probs.tsv"}
    if config["fusion"].get("learn"):
        metadata["metadata_inner"] = "results/final/metadata/inner_probs.tsv"
    return combination_inputs(
        config, members, metadata, lambda modality: f"results/final/image/{modality}"
    )


def partition_records(config: dict, wildcards: dict, patterns: dict) -> list:
    """One record per partition's fold, with its ``repeat``, ``fold`` and, for each named
    pattern, that fold's file (patterns may use the job's ``wildcards``).

    Rule scripts read a file's repeat and fold from its record instead of from its position in
    an input list, so no script depends on the order files are listed in.
    """
    return [
        {
            "repeat": repeat,
            "fold": fold,
            **{
                key: pattern.format(**{**wildcards, "repeat": repeat, "fold": fold})
                for key, pattern in patterns.items()
            },
        }
        for repeat, fold in partitions(config)
    ]


def member_stage_probs(member: str, repeat, fold) -> str:
    """A fold's probabilities of one member alone: the forest's, or an image branch's."""
    if member == METADATA:
        return f"results/metadata/repeat{repeat}/fold{fold}/probs.tsv"
    return f"results/image/{member}/repeat{repeat}/fold{fold}/probs.tsv"


def member_records(config: dict, members) -> list:
    """Each fold's record of each of ``members`` (sorted): ``member``, ``repeat``, ``fold`` and
    its stage probabilities (:func:`member_stage_probs`)."""
    return [
        {
            "member": member,
            "repeat": repeat,
            "fold": fold,
            "probs": member_stage_probs(member, repeat, fold),
        }
        for member in sorted(members)
        for repeat, fold in partitions(config)
    ]


def image_stage_records(config: dict, combinations: dict) -> list:
    """Each fold's image stage metrics of every image member of ``combinations``: ``member``,
    ``repeat``, ``fold`` and its ``metrics.json``, which says whether the branch learned
    (:func:`fusion_dag.image.learning_verdict`); aggregate_results counts from them the folds
    in which a combination's branch learned nothing."""
    images = {m for members in combinations.values() for m in members if m != METADATA}
    return [
        {
            "member": member,
            "repeat": repeat,
            "fold": fold,
            "metrics": f"results/image/{member}/repeat{repeat}/fold{fold}/metrics.json",
        }
        for member in sorted(images)
        for repeat, fold in partitions(config)
    ]


def diagnostic_records(config: dict, image: str) -> list:
    """Each fold's record of metadata + ``image``: the fold's forest probabilities and its
    image's probabilities."""
    return [
        {
            "repeat": repeat,
            "fold": fold,
            "metadata": member_stage_probs(METADATA, repeat, fold),
            "image": member_stage_probs(image, repeat, fold),
        }
        for repeat, fold in partitions(config)
    ]


def ablation_records(config: dict, pairs: dict) -> list:
    """Each fold's record of every metadata + image combination of ``pairs``: ``combination``,
    ``repeat``, ``fold``, the ablation's metrics and probabilities, V3's fusion metrics and
    V3's pooled out-of-fold predictions."""
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
        for combination in pairs
        for repeat, fold in partitions(config)
        for place in [f"repeat{repeat}/fold{fold}"]
    ]


def protocol_settings(config: dict, combinations: dict) -> dict:
    """What the protocol's aggregation fuses with (:mod:`fusion_dag.protocol`): each
    combination's configured ``weights`` (the ``fixed`` row), each image member's
    ``validation_fraction`` (the nested choice's early-stopping visits, as the image stage drew
    them) and each repeat's ``seeds``."""
    images = sorted({m for members in combinations.values() for m in members if m != METADATA})
    return {
        "weights": {
            name: member_weights(members, **weight_settings(config, members))
            for name, members in combinations.items()
        },
        "validation_fraction": {
            m: modality_settings(config, m)["validation_fraction"] for m in images
        },
        "seeds": {repeat: repeat_seed(config, repeat) for repeat in repeats(config)},
    }


def repeats(config: dict) -> list:
    """The repeats' numbers, from 1."""
    return list(range(1, config["cv"]["repeats"] + 1))


def protocol_screen_records(config: dict, combinations: dict) -> list:
    """Each repeat's protocol_screen outputs (``repeat``, ``screened``, ``probs``: the nested
    and leaky screens' forests), when some combination has the forest; none otherwise."""
    if not uses_metadata(combinations):
        return []
    return [
        {
            "repeat": repeat,
            "screened": f"results/protocol/repeat{repeat}/screened.tsv",
            "probs": f"results/protocol/repeat{repeat}/metadata_probs.tsv",
        }
        for repeat in repeats(config)
    ]


def heatmap_records(config: dict, modality: str) -> list:
    """Each fold of repeat 1 (every visit held out once) of an image modality, with the files
    its Grad-CAM heatmaps need: the checkpoint, its sidecar, the image stage's visit and
    view probabilities and its metrics (whether the branch learned)."""
    folder = f"results/image/{modality}/repeat1"
    return [
        {
            "fold": fold,
            "checkpoint": f"{folder}/fold{fold}/checkpoint.weights.h5",
            "sidecar": f"{folder}/fold{fold}/checkpoint.json",
            "probs": f"{folder}/fold{fold}/probs.tsv",
            "view_probs": f"{folder}/fold{fold}/view_probs.tsv",
            "metrics": f"{folder}/fold{fold}/metrics.json",
        }
        for fold in range(1, config["cv"]["folds"] + 1)
    ]


def trained_models(config: dict, combinations: dict, modalities) -> list:
    """Every fold's trained models: each modality's checkpoints, then (when a combination uses
    metadata) the forests."""
    folds = partitions(config)
    models = [
        f"results/image/{modality}/repeat{repeat}/fold{fold}/checkpoint.weights.h5"
        for modality in modalities
        for repeat, fold in folds
    ]
    if uses_metadata(combinations):
        models += [
            f"results/metadata/repeat{repeat}/fold{fold}/model.skops" for repeat, fold in folds
        ]
    return models


def screen_file(config: dict, repeat, fold) -> dict:
    """With ``label_screen``: the fold's screened training visits as an input named
    ``screen`` (of the metadata, image and fusion jobs of that fold); none without it."""
    if not config.get("label_screen"):
        return {}
    return {"screen": f"results/screen/repeat{repeat}/fold{fold}.tsv"}


def learned_tables(config: dict, combinations: dict) -> list:
    """With ``fusion.learn``: each combination's ``learned.tsv``; none without it."""
    if not config["fusion"].get("learn"):
        return []
    return [f"results/fusion/{combination}/learned.tsv" for combination in combinations]


def run_metrics(config: dict, combinations: dict, modalities) -> list:
    """Every image and fusion job's metrics, which record how each job ran (threads)."""
    folds = partitions(config)
    return [
        f"results/image/{modality}/repeat{repeat}/fold{fold}/metrics.json"
        for modality in modalities
        for repeat, fold in folds
    ] + [
        f"results/fusion/{combination}/repeat{repeat}/fold{fold}/metrics.json"
        for combination in combinations
        for repeat, fold in folds
    ]


# The clinical report's tables and figures (rule clinical_report; calibration.tsv is written
# with the headline).
CLINICAL_REPORT = [
    f"results/report/{name}"
    for name in (
        "participants.tsv",
        "table1.tsv",
        "decision_curves.tsv",
        "subgroups.tsv",
        "flow.png",
        "decision_curves.png",
        "calibration.png",
    )
]


def report_figures(modalities, pairs: dict) -> list:
    """The figures and diagnostics of the headline: the evaluation's figures, each modality's
    learning curves, each metadata + image pair's weight sweep and branch agreement, and the
    clinical report (:data:`CLINICAL_REPORT`)."""
    return [
        "results/plots/fold_kappa.png",
        "results/plots/confusion_matrices.png",
        "results/plots/kappa_intervals.png",
        "results/plots/comparisons.png",
        "results/plots/reliability.png",
        "results/plots/roc_curves.png",
        *[f"results/plots/learning_curves_{modality}.png" for modality in modalities],
        *[f"results/plots/weight_sweep_{combination}.png" for combination in pairs],
        *[f"results/diagnostics/{combination}/branch_agreement.tsv" for combination in pairs],
        *CLINICAL_REPORT,
    ]


def explain_outputs(combinations: dict, modalities) -> list:
    """What the explain target writes: the forest's importance (when a combination uses
    metadata), contributions and member drops (no rows without a fusion), the review list and
    each image modality's heatmaps."""
    outputs = []
    if uses_metadata(combinations):
        outputs += ["results/explain/importance.tsv", "results/explain/importance.png"]
    outputs += [
        "results/explain/contributions.tsv",
        "results/explain/member_drop.tsv",
        "results/explain/review.tsv",
    ]
    outputs += [f"results/explain/heatmaps_{modality}.png" for modality in modalities]
    return outputs


def predict_explain_outputs(config: dict) -> list:
    """The predict target's explanations, when predict.explain is true."""
    if not config["predict"]["explain"]:
        return []
    return ["results/predict/contributions.tsv", "results/predict/heatmaps"]


def run_summary(config: dict, modalities) -> dict:
    """What the front page says was run: classes, folds, repeats, the primary, the image
    modalities and the fusion weights."""
    weights = config["fusion"].get("weights")
    if weights:
        described = ", ".join(f"{member} {weight:g}" for member, weight in weights.items())
    else:
        metadata_weight = config["fusion"]["metadata_weight"]
        described = (
            f"{metadata_weight:.2f} x RF + {1 - metadata_weight:.2f} x the images, shared equally"
        )
    return {
        "classes": config["classes"],
        "folds": config["cv"]["folds"],
        "repeats": config["cv"]["repeats"],
        "primary": config["evaluation"]["primary"],
        "modalities": list(modalities),
        "weights": described,
    }


def spec_modalities(config: dict, modalities: dict) -> dict:
    """Each modality in use (name -> layout): its layout and image settings, as the model spec
    records them."""
    return {
        name: {**layout, **modality_settings(config, name)} for name, layout in modalities.items()
    }


def bundle_inputs(combinations: dict, modalities, coverage: float | None = None) -> dict:
    """The final models a bundle holds: the forest (when a combination uses metadata) and
    each modality's final checkpoint, sidecar and probabilities; with a ``coverage``
    (predict.coverage), each combination's pooled out-of-fold table too, to calibrate its
    prediction sets (this runs the cross-validation)."""
    inputs = {}
    if coverage is not None:
        for name in combinations:
            inputs[f"{name}_oof"] = f"results/fusion/{name}/oof.tsv"
    if uses_metadata(combinations):
        inputs["forest"] = "results/final/metadata/model.skops"
    for modality in modalities:
        folder = f"results/final/image/{modality}"
        inputs[f"{modality}_checkpoint"] = f"{folder}/checkpoint.weights.h5"
        inputs[f"{modality}_sidecar"] = f"{folder}/checkpoint.json"
        inputs[f"{modality}_probs"] = f"{folder}/probs.tsv"
    return inputs
