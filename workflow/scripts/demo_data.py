import pandas as pd

from fusion_dag.demo import write_demo
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    table = write_demo(
        snakemake.output.table,
        snakemake.params.patients,
        snakemake.params.seed,
        thermal_signal=snakemake.params.thermal_signal,
        new_patients=snakemake.params.new_patients,
    )
    thermal = pd.read_csv(snakemake.output.thermal_table)
    log.info(
        "Demo data: %d rows, %d patients; thermal views %d (image table %s); depth maps %d, "
        "wound photos %d",
        len(table),
        table["patient_id"].nunique(),
        len(thermal),
        snakemake.output.thermal_table,
        table["depth_map"].notna().sum(),
        table["wound_photo"].notna().sum(),
    )
    new = pd.read_csv(snakemake.output.new_table)
    log.info(
        "New patients (never in the demo table, for predict): %d rows, %d patients (%s)",
        len(new),
        new["patient_id"].nunique(),
        snakemake.output.new_table,
    )
