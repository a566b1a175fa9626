from fusion_dag.artifacts import read_json, read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fit_kappa, fold_metrics
from fusion_dag.fusion import ImageMember, fuse_v3, image_alone, log_weights, weighted_sum
from fusion_dag.joblog import job_log
from fusion_dag.weights import METADATA, member_weights

with job_log(snakemake.log[0]) as log:
    members = snakemake.wildcards.combination.split("+")
    repeat, fold = int(snakemake.wildcards.repeat), int(snakemake.wildcards.fold)
    classes = snakemake.params.classes
    settings = snakemake.params.settings
    weights = member_weights(members, **settings["weights"])
    expected = {"repeat": repeat, "fold": fold, "classes": classes}
    rf_probs = read_tsv(snakemake.input.metadata) if METADATA in members else None
    # In-sample probabilities of every fitted member on its training rows (memorisation).
    fitted = {METADATA: read_tsv(snakemake.input.metadata_fit)} if rf_probs is not None else {}
    modalities = [m for m in members if m != METADATA]
    runtime = None
    if members == modalities[:1]:
        (modality,) = modalities
        probs = fitted[modality] = image_alone(
            modality,
            read_tsv(snakemake.input[f"{modality}_probs"]),
            snakemake.input[f"{modality}_checkpoint"],
            read_json(snakemake.input[f"{modality}_sidecar"]),
            {**expected, "backbone": settings["branches"][modality]["backbone"]},
            log,
        )
    elif modalities:
        from fusion_dag.cache import load_cache
        from fusion_dag.image import configure_tensorflow

        runtime = configure_tensorflow(
            settings["intra_op_threads"], snakemake.threads, settings["seed"]
        )
        image_members = {
            m: ImageMember(
                *load_cache(snakemake.input[f"{m}_cache"], snakemake.input[f"{m}_ids"]),
                probs=read_tsv(snakemake.input[f"{m}_probs"]),
                checkpoint=snakemake.input[f"{m}_checkpoint"],
                manifest=read_json(snakemake.input[f"{m}_sidecar"]),
                settings=settings["branches"][m],
            )
            for m in modalities
        }
        probs = fuse_v3(weights, rf_probs, image_members, expected, settings["batch_size"], log)
        fitted.update({m: member.probs for m, member in image_members.items()})
    else:
        log_weights(weights, log)
        probs = rf_probs
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
