from fusion_dag.artifacts import read_json, read_tsv, write_text, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import comparisons_table, headline_table, markdown_table, per_fold_table

with job_log(snakemake.log[0]) as log:
    records = [read_json(path) for path in snakemake.input.metrics]
    for record in records:
        record.pop("weights")
        record.pop("runtime", None)
    per_fold = per_fold_table(records)
    oofs = {
        name: read_tsv(path)
        for name, path in zip(snakemake.params.combinations, snakemake.input.oof, strict=True)
    }
    classes, evaluation = snakemake.params.classes, snakemake.params.evaluation
    headline = headline_table(per_fold, oofs, classes, evaluation, snakemake.params.seed)
    comparisons = comparisons_table(oofs, classes, evaluation, snakemake.params.seed)
    write_tsv(per_fold, snakemake.output.per_fold)
    write_tsv(headline, snakemake.output.table)
    write_text(markdown_table(headline), snakemake.output.markdown)
    write_tsv(comparisons, snakemake.output.comparisons)
    write_text(markdown_table(comparisons), snakemake.output.comparisons_markdown)
    log.info("Headline table:\n%s", markdown_table(headline))
    log.info("Paired comparisons:\n%s", markdown_table(comparisons))
