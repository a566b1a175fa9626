from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.cache import load_cache
from fusion_dag.checkpoint import checkpoint_manifest
from fusion_dag.evaluate import fold_metrics
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.image import (
        BranchFold,
        best_epoch,
        branch_probabilities,
        configure_tensorflow,
        train_branch,
        warn_if_collapsed,
    )

    settings = snakemake.params.settings
    runtime = configure_tensorflow(
        settings["intra_op_threads"], snakemake.threads, snakemake.params.seed
    )
    task = BranchFold(
        *load_cache(snakemake.input.cache, snakemake.input.ids),
        folds=read_tsv(snakemake.input.folds),
        fold=int(snakemake.wildcards.fold),
        modality=snakemake.wildcards.modality,
        classes=snakemake.params.classes,
        settings=settings,
        seed=snakemake.params.seed,
    )
    model, images_per_second = train_branch(
        task, snakemake.output.checkpoint, snakemake.output.history
    )
    probs = branch_probabilities(model, task)
    metrics = fold_metrics(probs, task.folds, task.classes)
    metrics["best_epoch"] = best_epoch(snakemake.output.history)
    warn_if_collapsed(probs, task.classes, metrics["best_epoch"], task.modality)
    metrics["fit_images_per_second"] = images_per_second
    metrics["runtime"] = {"threads": snakemake.threads, **runtime}
    log.info(
        "Best epoch %d: validation kappa %.3f, train kappa %.3f",
        metrics["best_epoch"],
        metrics["kappa"],
        metrics["train_kappa"],
    )
    write_json(metrics, snakemake.output.metrics)
    write_json(
        checkpoint_manifest(
            model,
            task.modality,
            settings["backbone"],
            (int(snakemake.wildcards.repeat), task.fold),
            task.classes,
            snakemake.output.checkpoint,
        ),
        snakemake.output.sidecar,
    )
    write_tsv(probs, snakemake.output.probs)
