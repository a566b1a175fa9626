from fusion_dag.artifacts import read_json, write_text, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import headline_table, markdown_table, per_fold_table

with job_log(snakemake.log[0]) as log:
    records = [read_json(path) for path in snakemake.input.metrics]
    for record in records:
        record.pop("weights")
        record.pop("runtime", None)
    per_fold = per_fold_table(records)
    headline = headline_table(per_fold, snakemake.params.combinations, snakemake.params.classes)
    write_tsv(per_fold, snakemake.output.per_fold)
    write_tsv(headline, snakemake.output.table)
    write_text(markdown_table(headline), snakemake.output.markdown)
    log.info("Headline table:\n%s", markdown_table(headline))
