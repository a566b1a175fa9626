from fusion_dag.demo import MODALITY_FOLDERS, write_demo
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    table = write_demo(snakemake.output.table, snakemake.params.patients, snakemake.params.seed)
    log.info(
        "Demo data: %d rows, %d patients; images: %s",
        len(table),
        table["patient_id"].nunique(),
        ", ".join(f"{m} {table[m].notna().sum()}" for m in MODALITY_FOLDERS),
    )
