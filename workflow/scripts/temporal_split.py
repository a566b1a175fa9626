from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.temporal import read_partition

with job_log(snakemake.log[0]) as log:
    temporal = snakemake.params.temporal
    folds, patients = read_partition(
        read_tsv(snakemake.input.samples),
        snakemake.input.table,
        temporal,
        snakemake.params.na_values,
    )
    later = patients[patients["side"] == "later"]
    log.info(
        "Temporal split by %s: %d earlier patients (%d visits) fit the models, %d later "
        "patients (%d visits) are held out; later patients start at %s",
        temporal.get("column") or "the table's order",
        len(patients) - len(later),
        int(patients.loc[patients["side"] == "earlier", "visits"].sum()),
        len(later),
        int(later["visits"].sum()),
        later["first"].iloc[0] if len(later) else "-",
    )
    write_tsv(patients, snakemake.output.patients)
    write_tsv(folds, snakemake.output.folds)
