import pandas as pd

from fusion_dag.artifacts import read_json, read_tsv, write_text, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import ablation_table, markdown_table, versus_v3

with job_log(snakemake.log[0]) as log:
    partitions, n = snakemake.params.partitions, len(snakemake.params.partitions)
    records = [
        row for path in snakemake.input.ablation for row in read_tsv(path).to_dict("records")
    ]
    v3 = [
        {**read_json(path), "strategy": "V3", "rf_source": "out_of_fold"}
        for path in snakemake.input.v3
    ]
    folds = read_tsv(snakemake.input.folds)
    gains = []
    for index, (combination, v3_oof) in enumerate(
        zip(snakemake.params.combinations, snakemake.input.v3_oof, strict=True)
    ):
        paths = snakemake.input.variant_probs[index * n : (index + 1) * n]
        per_fold = [(r, k, read_tsv(p)) for (r, k), p in zip(partitions, paths, strict=True)]
        gain = versus_v3(
            read_tsv(v3_oof),
            per_fold,
            folds,
            snakemake.params.classes,
            snakemake.params.evaluation,
            snakemake.params.seed,
        )
        gains.append(gain.assign(combination=combination))
    table = ablation_table(records, v3).merge(
        pd.concat(gains, ignore_index=True), on=["combination", "strategy", "rf_source"], how="left"
    )
    write_tsv(table, snakemake.output.table)
    write_text(markdown_table(table), snakemake.output.markdown)
    log.info("Ablation:\n%s", markdown_table(table))
