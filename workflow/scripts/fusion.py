from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fit_kappa, fold_metrics
from fusion_dag.folds import without_screened
from fusion_dag.fusion import (
    MEMBER_FILES,
    fuse_combination,
    read_image_member,
    tensorflow_runtime,
)
from fusion_dag.joblog import job_log
from fusion_dag.learn import learned_fusion, learned_metrics, temper_table
from fusion_dag.weights import METADATA, member_weights, weighted_sum

with job_log(snakemake.log[0]) as log:
    members = snakemake.wildcards.combination.split("+")
    repeat, fold = int(snakemake.wildcards.repeat), int(snakemake.wildcards.fold)
    classes = snakemake.params.classes
    settings = snakemake.params.settings
    weights = member_weights(members, **settings["weights"])
    runtime = tensorflow_runtime(members, settings, snakemake.threads)
    image_members = {
        m: read_image_member({k: snakemake.input.get(f"{m}_{k}") for k in MEMBER_FILES}, branch)
        for m, branch in settings.get("branches", {}).items()
    }
    metadata_probs = read_tsv(snakemake.input.metadata) if METADATA in members else None
    learned = None
    if settings.get("learn"):
        screened = read_tsv(snakemake.input.screen) if snakemake.input.get("screen") else None
        inputs = {
            "metadata_probs": metadata_probs,
            "image_probs": {m: member.probs for m, member in image_members.items()},
            # The fold table the image stages trained with: without screened visits.
            "folds": without_screened(read_tsv(snakemake.input.folds), screened),
            "image_split": settings["image_split"],
        }
        learned = learned_fusion(settings["learn"], members, inputs, fold, weights, classes)
        weights = learned["weights"]
    probs = fuse_combination(
        weights,
        metadata_probs,
        image_members,
        {"repeat": repeat, "fold": fold, "classes": classes},
        settings.get("batch_size"),
    )
    # In-sample probabilities of every fitted member on its training rows (memorisation).
    fitted = {m: member.probs for m, member in image_members.items()}
    if metadata_probs is not None:
        fitted[METADATA] = read_tsv(snakemake.input.metadata_fit)
    labels = read_tsv(snakemake.input.samples)
    temperature = learned and learned["temperature"]
    untempered = probs
    if temperature:
        probs = temper_table(probs, temperature, classes)
    metrics = fold_metrics(probs, labels, classes)
    if learned:
        metrics.update(learned_metrics(learned, untempered, probs, labels, classes))
    metrics["fit_kappa"] = fit_kappa(weighted_sum(fitted, weights, classes), labels, classes)
    log.info(
        "Validation kappa %.3f, train kappa %.3f, fit kappa %.3f",
        metrics["kappa"],
        metrics["train_kappa"],
        metrics["fit_kappa"],
    )
    write_tsv(probs, snakemake.output.probs)
    write_json(
        {
            "combination": snakemake.wildcards.combination,
            "repeat": repeat,
            "fold": fold,
            "weights": weights,
            **metrics,
            **({"runtime": runtime} if runtime else {}),
        },
        snakemake.output.metrics,
    )
