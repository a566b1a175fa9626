from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fit_kappa, fold_metrics
from fusion_dag.fusion import fuse_combination, weighted_sum
from fusion_dag.joblog import job_log
from fusion_dag.weights import METADATA, member_weights

with job_log(snakemake.log[0]) as log:
    members = snakemake.wildcards.combination.split("+")
    repeat, fold = int(snakemake.wildcards.repeat), int(snakemake.wildcards.fold)
    classes = snakemake.params.classes
    settings = snakemake.params.settings
    weights = member_weights(members, **settings["weights"])
    rf_probs = read_tsv(snakemake.input.metadata) if METADATA in members else None
    probs, image_probs, runtime = fuse_combination(
        members,
        weights,
        rf_probs,
        snakemake.input,
        {"repeat": repeat, "fold": fold, "classes": classes},
        settings,
        snakemake.threads,
        log,
    )
    # In-sample probabilities of every fitted member on its training rows (memorisation).
    fitted = dict(image_probs)
    if rf_probs is not None:
        fitted[METADATA] = read_tsv(snakemake.input.metadata_fit)
    labels = read_tsv(snakemake.input.samples)
    metrics = fold_metrics(probs, labels, classes)
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
            **({"runtime": {"threads": snakemake.threads, **runtime}} if runtime else {}),
        },
        snakemake.output.metrics,
    )
