from fusion_dag.artifacts import read_json, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.learn import learned_table

with job_log(snakemake.log[0]) as log:
    records = [read_json(record["metrics"]) for record in snakemake.params.fold_files]
    table = learned_table(records, snakemake.params.members)
    write_tsv(table, snakemake.output.learned)
    log.info("What %d folds learned:\n%s", len(table), table.to_string(index=False))
