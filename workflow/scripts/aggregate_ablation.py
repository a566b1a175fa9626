import pandas as pd

from fusion_dag.artifacts import read_json, read_tsv, write_text, write_tsv
from fusion_dag.evaluate import oof_table
from fusion_dag.joblog import job_log
from fusion_dag.report import ablation_table, markdown_table, versus_v3

with job_log(snakemake.log[0]) as log:
    classes, partitions = snakemake.params.classes, snakemake.params.partitions
    records = []
    for path in snakemake.input.ablation:
        records += read_tsv(path).to_dict("records")
    v3 = [
        {**read_json(path), "strategy": "V3", "rf_source": "out_of_fold"}
        for path in snakemake.input.v3
    ]
    folds = read_tsv(snakemake.input.folds)
    gains = []
    for index, combination in enumerate(snakemake.params.combinations):
        paths = snakemake.input.variant_probs[
            index * len(partitions) : (index + 1) * len(partitions)
        ]
        per_fold = [(r, k, read_tsv(path)) for (r, k), path in zip(partitions, paths, strict=True)]
        variants = {}
        for key, _ in per_fold[0][2].groupby(["strategy", "rf_source"], sort=False):
            parts = [
                (r, k, table[(table["strategy"] == key[0]) & (table["rf_source"] == key[1])])
                for r, k, table in per_fold
            ]
            variants[key] = oof_table(parts, folds, classes)
        v3_oof = read_tsv(snakemake.input.v3_oof[index])
        gain = versus_v3(
            v3_oof, variants, classes, snakemake.params.evaluation, snakemake.params.seed
        )
        gains.append(gain.assign(combination=combination))
    table = ablation_table(records, v3).merge(
        pd.concat(gains, ignore_index=True), on=["combination", "strategy", "rf_source"], how="left"
    )
    write_tsv(table, snakemake.output.table)
    write_text(markdown_table(table), snakemake.output.markdown)
    log.info("Ablation:\n%s", markdown_table(table))
