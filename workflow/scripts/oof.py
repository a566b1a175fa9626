from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.evaluate import oof_table
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    fold_probs = [
        (repeat, fold, read_tsv(path))
        for (repeat, fold), path in zip(
            snakemake.params.partitions, snakemake.input.probs, strict=True
        )
    ]
    oof = oof_table(fold_probs, read_tsv(snakemake.input.folds), snakemake.params.classes)
    write_tsv(oof, snakemake.output.oof)
    log.info("%d out-of-fold rows over %d repeats", len(oof), oof["repeat"].nunique())
