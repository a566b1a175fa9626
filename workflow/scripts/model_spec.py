from fusion_dag.artifacts import read_tsv, write_json
from fusion_dag.bundle import model_spec
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    spec = model_spec(
        read_tsv(snakemake.input.samples),
        snakemake.params.columns,
        snakemake.params.classes,
        snakemake.params.modalities,
        snakemake.params.combinations,
        snakemake.params.fusion,
        snakemake.params.na_values,
    )
    write_json(spec, snakemake.output.spec)
    log.info(
        "Model spec: %d features, modalities %s, default combination %s",
        len(spec["features"]),
        ", ".join(spec["modalities"]) or "none",
        spec["default_combination"],
    )
