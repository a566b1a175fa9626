from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fold_metrics
from fusion_dag.image import (
    best_epoch,
    branch_probabilities,
    checkpoint_manifest,
    configure_tensorflow,
    load_cache,
    train_branch,
)
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    configure_tensorflow(snakemake.threads, snakemake.params.seed)
    fold = int(snakemake.wildcards.fold)
    classes = snakemake.params.classes
    settings = snakemake.params.settings
    folds = read_tsv(snakemake.input.folds)
    images, positions = load_cache(snakemake.input.cache, snakemake.input.ids)
    model, images_per_second = train_branch(
        images,
        positions,
        folds,
        fold,
        snakemake.wildcards.modality,
        classes,
        settings,
        snakemake.params.seed,
        snakemake.output.checkpoint,
        snakemake.output.history,
    )
    probs = branch_probabilities(
        model, images, positions, folds, fold, classes, settings["batch_size"]
    )
    metrics = fold_metrics(probs, folds, classes)
    metrics["best_epoch"] = best_epoch(snakemake.output.history)
    metrics["fit_images_per_second"] = images_per_second
    log.info(
        "Best epoch %d: validation kappa %.3f, train kappa %.3f",
        metrics["best_epoch"],
        metrics["kappa"],
        metrics["train_kappa"],
    )
    write_json(metrics, snakemake.output.metrics)
    write_json(
        checkpoint_manifest(
            model, snakemake.wildcards.modality, fold, classes, snakemake.output.checkpoint
        ),
        snakemake.output.sidecar,
    )
    write_tsv(probs, snakemake.output.probs)
