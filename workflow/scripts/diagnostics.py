import pandas as pd

from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.evaluate import branch_agreement, weight_sweep
from fusion_dag.joblog import job_log
from fusion_dag.weights import METADATA, member_weights

with job_log(snakemake.log[0]) as log:
    classes = snakemake.params.classes
    labels = read_tsv(snakemake.input.folds).drop_duplicates("id")
    sweeps, agreements = [], []
    for record in snakemake.params.fold_files:
        metadata, image = read_tsv(record["metadata"]), read_tsv(record["image"])
        partition = {"repeat": record["repeat"], "fold": record["fold"]}
        sweeps.append(weight_sweep(metadata, image, labels, classes).assign(**partition))
        agreements.append({**partition, **branch_agreement(metadata, image, labels, classes)})
    sweep = pd.concat(sweeps, ignore_index=True)
    sweep = sweep[["repeat", "fold", "metadata_weight", "kappa"]]
    mean = sweep.groupby("metadata_weight")["kappa"].mean()
    members = snakemake.wildcards.combination.split("+")
    configured = member_weights(members, **snakemake.params.weights)[METADATA]
    at_configured = mean.iloc[(mean.index.to_series() - configured).abs().argmin()]
    log.info(
        "Weight sweep: best mean kappa %.3f at w=%.2f; configured w=%.2f gives %.3f",
        mean.max(),
        mean.idxmax(),
        configured,
        at_configured,
    )
    for (repeat, fold), rows in sweep.groupby(["repeat", "fold"]):
        best = rows.loc[rows["kappa"].idxmax()]
        log.info(
            "Repeat %d, fold %d: best w=%.2f (kappa %.3f)",
            repeat,
            fold,
            best["metadata_weight"],
            best["kappa"],
        )
    write_tsv(sweep, snakemake.output.sweep)
    write_tsv(pd.DataFrame(agreements), snakemake.output.agreement)
