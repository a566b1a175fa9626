from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.cache import load_cache
from fusion_dag.checkpoint import checkpoint_sidecar
from fusion_dag.evaluate import fold_metrics
from fusion_dag.features import input_feature_cache
from fusion_dag.folds import without_screened
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.image import BranchFold, train_stage

    settings = snakemake.params.settings
    screened = read_tsv(snakemake.input.screen) if snakemake.input.get("screen") else None
    repeat, fold = int(snakemake.wildcards.repeat), int(snakemake.wildcards.fold)
    task = BranchFold(
        *load_cache(snakemake.input.cache, snakemake.input.views),
        # With label_screen, the fold's screened training visits leave its training.
        folds=without_screened(read_tsv(snakemake.input.folds), screened),
        fold=fold,
        modality=snakemake.wildcards.modality,
        classes=snakemake.params.classes,
        settings=settings,
        seed=snakemake.params.seed,
        features=input_feature_cache(snakemake.input),
    )
    output = snakemake.output
    model, probs, view_probs, record = train_stage(
        task, output.checkpoint, output.history, snakemake.threads, f"repeat {repeat}, fold {fold}"
    )
    metrics = {**fold_metrics(probs, task.folds, task.classes), **record}
    log.info(
        "Best epoch %d: validation kappa %.3f, train kappa %.3f",
        metrics["best_epoch"],
        metrics["kappa"],
        metrics["train_kappa"],
    )
    sidecar = checkpoint_sidecar(
        model, task.modality, settings["backbone"], (repeat, fold), task.classes, output.checkpoint
    )
    write_json(metrics, output.metrics)
    write_json(sidecar, output.sidecar)
    write_tsv(view_probs, output.view_probs)
    write_tsv(probs, output.probs)
