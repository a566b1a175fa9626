from fusion_dag.artifacts import read_json, read_tsv, write_text
from fusion_dag.joblog import job_log
from fusion_dag.report import front_page

with job_log(snakemake.log[0]) as log:
    # The page with the temporal validation (evaluation.temporal; without it aggregate_results
    # writes the page).
    temporal = snakemake.input.temporal
    page = front_page(
        read_tsv(snakemake.input.headline),
        read_tsv(snakemake.input.comparisons),
        snakemake.params.run,
        snakemake.params.evaluation["confidence"],
        read_json(snakemake.input.plan),
        read_tsv(temporal),
    )
    write_text(page, snakemake.output.front_page)
    log.info("Front page written with the temporal validation (%s)", temporal)
