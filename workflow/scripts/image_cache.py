from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.cache import build_cache
from fusion_dag.joblog import job_log
from fusion_dag.views import VIEW_COLUMNS, with_crops

with job_log(snakemake.log[0]) as log:
    modality = snakemake.wildcards.modality
    images = read_tsv(snakemake.input.images)
    views = with_crops(
        images[images["modality"] == modality][list(VIEW_COLUMNS)].reset_index(drop=True),
        snakemake.params.box_margin,
    )
    conversions = build_cache(
        views,
        snakemake.params.size,
        snakemake.output.cache,
        channels=snakemake.params.channels,
        value_range=snakemake.params.value_range,
    )
    write_tsv(views, snakemake.output.views)
    boxed = int(views["crop_x0"].notna().sum())
    log.info(
        "Cached %d %s views of %d frames at %d px, %d channel(s); %s",
        len(views),
        modality,
        views["path"].nunique(),
        snakemake.params.size,
        snakemake.params.channels,
        f"{boxed} cropped to their wound box (margin {snakemake.params.box_margin:g}, square)"
        if boxed
        else "whole frames (no wound boxes)",
    )
    if conversions.get("to_grey"):
        log.info("%d colour views converted to grey-scale (luminance)", conversions["to_grey"])
    if conversions.get("grey_repeated"):
        log.info("%d grey-scale views repeated over 3 channels", conversions["grey_repeated"])
