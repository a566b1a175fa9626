from fusion_dag.artifacts import read_json, read_tsv, write_text
from fusion_dag.joblog import job_log
from fusion_dag.report import front_page

with job_log(snakemake.log[0]) as log:
    temporal = snakemake.input.get("temporal")
    page = front_page(
        read_tsv(snakemake.input.headline),
        read_tsv(snakemake.input.comparisons),
        snakemake.params.run,
        snakemake.params.evaluation["confidence"],
        read_json(snakemake.input.plan),
        read_tsv(temporal) if temporal else None,
    )
    write_text(page, snakemake.output.front_page)
    log.info("Front page written%s", " with the temporal validation" if temporal else "")
