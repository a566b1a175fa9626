from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.evaluate import oof_table
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    fold_probs = [
        (record["repeat"], record["fold"], read_tsv(record["probs"]))
        for record in snakemake.params.fold_files
    ]
    oof = oof_table(fold_probs, read_tsv(snakemake.input.folds), snakemake.params.classes)
    write_tsv(oof, snakemake.output.oof)
    log.info("%d out-of-fold rows over %d repeats", len(oof), oof["repeat"].nunique())
