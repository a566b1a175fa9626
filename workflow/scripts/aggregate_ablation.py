import pandas as pd

from fusion_dag.artifacts import read_json, read_tsv, write_text, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import ablation_table, markdown_table, versus_v3

with job_log(snakemake.log[0]) as log:
    fold_files = pd.DataFrame(snakemake.params.fold_files)
    records = [row for path in fold_files["metrics"] for row in read_tsv(path).to_dict("records")]
    v3 = [
        {**read_json(path), "strategy": "V3", "rf_source": "out_of_fold"}
        for path in fold_files["v3"]
    ]
    folds = read_tsv(snakemake.input.folds)
    gains = []
    for (combination, v3_oof), files in fold_files.groupby(["combination", "v3_oof"], sort=False):
        per_fold = [
            (record.repeat, record.fold, read_tsv(record.probs)) for record in files.itertuples()
        ]
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
