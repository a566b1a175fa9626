from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fold_metrics
from fusion_dag.fusion import fuse_probabilities, member_weights
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    members = snakemake.wildcards.combination.split("+")
    classes = snakemake.params.classes
    weights = member_weights(members, snakemake.params.weights.get("metadata_weight"))
    tables = {member: read_tsv(snakemake.input[member]) for member in members}
    probs = fuse_probabilities(tables, weights, classes)
    metrics = fold_metrics(probs, read_tsv(snakemake.input.samples), classes)
    log.info("Validation kappa %.3f, train kappa %.3f", metrics["kappa"], metrics["train_kappa"])
    write_tsv(probs, snakemake.output.probs)
    write_json(
        {
            "combination": snakemake.wildcards.combination,
            "fold": int(snakemake.wildcards.fold),
            "weights": weights,
            **metrics,
        },
        snakemake.output.metrics,
    )
