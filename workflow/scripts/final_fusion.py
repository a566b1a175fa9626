from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fit_kappa
from fusion_dag.folds import FINAL_PLACEMENT
from fusion_dag.fusion import fuse_combination
from fusion_dag.joblog import job_log
from fusion_dag.weights import METADATA, member_weights

with job_log(snakemake.log[0]) as log:
    members = snakemake.wildcards.combination.split("+")
    classes = snakemake.params.classes
    settings = snakemake.params.settings
    weights = member_weights(members, **settings["weights"])
    repeat, fold = FINAL_PLACEMENT
    probs, _, runtime = fuse_combination(
        members,
        weights,
        read_tsv(snakemake.input.metadata) if METADATA in members else None,
        snakemake.input,
        {"repeat": repeat, "fold": fold, "classes": classes},
        settings,
        snakemake.threads,
        log,
    )
    record = {
        "combination": snakemake.wildcards.combination,
        "weights": weights,
        "n_rows": len(probs),
        "fit_kappa": fit_kappa(probs, read_tsv(snakemake.input.samples), classes),
    }
    if runtime:
        record["runtime"] = {"threads": snakemake.threads, **runtime}
    log.info(
        "Final %s: in-sample kappa %.3f on %d rows",
        record["combination"],
        record["fit_kappa"],
        record["n_rows"],
    )
    write_tsv(probs, snakemake.output.probs)
    write_json(record, snakemake.output.metrics)
