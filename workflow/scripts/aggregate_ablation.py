from fusion_dag.artifacts import read_json, read_tsv, write_text, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import ablation_table, markdown_table

with job_log(snakemake.log[0]) as log:
    records = []
    for path in snakemake.input.ablation:
        records += read_tsv(path).to_dict("records")
    v3 = [
        {**read_json(path), "strategy": "V3", "rf_source": "out_of_fold"}
        for path in snakemake.input.v3
    ]
    table = ablation_table(records, v3)
    write_tsv(table, snakemake.output.table)
    write_text(markdown_table(table), snakemake.output.markdown)
    log.info("Ablation:\n%s", markdown_table(table))
