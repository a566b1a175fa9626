from fusion_dag.artifacts import ID, read_tsv, write_tsv
from fusion_dag.cache import build_cache
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    modality = snakemake.wildcards.modality
    images = read_tsv(snakemake.input.images)
    present = images[images[modality].notna()]
    conversions = build_cache(
        present[modality],
        snakemake.params.size,
        snakemake.output.cache,
        channels=snakemake.params.channels,
        value_range=snakemake.params.value_range,
    )
    write_tsv(present[[ID]], snakemake.output.ids)
    log.info(
        "Cached %d %s images at %d px, %d channel(s)",
        len(present),
        modality,
        snakemake.params.size,
        snakemake.params.channels,
    )
    if conversions.get("to_grey"):
        log.info("%d colour images converted to grey-scale (luminance)", conversions["to_grey"])
    if conversions.get("grey_repeated"):
        log.info("%d grey-scale images repeated over 3 channels", conversions["grey_repeated"])
