from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.cache import load_cache
from fusion_dag.checkpoint import checkpoint_manifest
from fusion_dag.evaluate import fit_kappa
from fusion_dag.folds import FINAL_PLACEMENT, final_fold_table
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
    samples = read_tsv(snakemake.input.samples)
    task = BranchFold(
        *load_cache(snakemake.input.cache, snakemake.input.ids),
        folds=final_fold_table(samples),
        fold=FINAL_PLACEMENT[1],
        modality=snakemake.wildcards.modality,
        classes=snakemake.params.classes,
        settings=settings,
        seed=snakemake.params.seed,
    )
    model, images_per_second = train_branch(
        task, snakemake.output.checkpoint, snakemake.output.history
    )
    probs = branch_probabilities(model, task)
    metrics = {
        "n_train": len(probs),
        "fit_kappa": fit_kappa(probs, samples, task.classes),
        "best_epoch": best_epoch(snakemake.output.history),
        "fit_images_per_second": images_per_second,
        "runtime": {"threads": snakemake.threads, **runtime},
    }
    warn_if_collapsed(probs, task.classes, metrics["best_epoch"], task.modality)
    log.info(
        "Final %s branch: best epoch %d, in-sample kappa %.3f on %d rows",
        task.modality,
        metrics["best_epoch"],
        metrics["fit_kappa"],
        metrics["n_train"],
    )
    write_json(metrics, snakemake.output.metrics)
    write_json(
        checkpoint_manifest(
            model,
            task.modality,
            settings["backbone"],
            FINAL_PLACEMENT,
            task.classes,
            snakemake.output.checkpoint,
        ),
        snakemake.output.sidecar,
    )
    write_tsv(probs, snakemake.output.probs)
