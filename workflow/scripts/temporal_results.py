from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.temporal import temporal_table

with job_log(snakemake.log[0]) as log:
    params = snakemake.params
    table = temporal_table(
        {c: read_tsv(p) for c, p in zip(params.combinations, snakemake.input.probs, strict=True)},
        read_tsv(snakemake.input.folds),
        read_tsv(snakemake.input.headline),
        params.classes,
        params.evaluation,
        params.seed,
    )
    write_tsv(table, snakemake.output.temporal)
    for row in table.itertuples(index=False):
        log.info(
            "%s on %d later patients: kappa %.3f [%.3f, %.3f], cross-validated %.3f",
            row.combination,
            row.n_patients,
            row.kappa,
            row.kappa_ci_low,
            row.kappa_ci_high,
            row.cv_kappa,
        )
