from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.cache import load_cache
from fusion_dag.checkpoint import checkpoint_sidecar
from fusion_dag.evaluate import fit_kappa
from fusion_dag.features import input_feature_cache
from fusion_dag.folds import FINAL_PLACEMENT, final_fold_table
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.image import BranchFold, train_stage

    settings = snakemake.params.settings
    samples = read_tsv(snakemake.input.samples)
    # Every labelled row trains; early stopping holds out an inner patient-grouped split.
    task = BranchFold(
        *load_cache(snakemake.input.cache, snakemake.input.views),
        folds=final_fold_table(samples),
        fold=FINAL_PLACEMENT[1],
        modality=snakemake.wildcards.modality,
        classes=snakemake.params.classes,
        settings=settings,
        seed=snakemake.params.seed,
        features=input_feature_cache(snakemake.input),
    )
    output = snakemake.output
    model, probs, view_probs, record = train_stage(
        task, output.checkpoint, output.history, snakemake.threads, "final"
    )
    in_sample = fit_kappa(probs, samples, task.classes)
    metrics = {"n_train": len(probs), "fit_kappa": in_sample, **record}
    log.info(
        "Final %s branch: best epoch %d, in-sample kappa %.3f on %d rows",
        task.modality,
        metrics["best_epoch"],
        metrics["fit_kappa"],
        metrics["n_train"],
    )
    sidecar = checkpoint_sidecar(
        model, task.modality, settings["backbone"], FINAL_PLACEMENT, task.classes, output.checkpoint
    )
    write_json(metrics, output.metrics)
    write_json(sidecar, output.sidecar)
    write_tsv(view_probs, output.view_probs)
    write_tsv(probs, output.probs)
