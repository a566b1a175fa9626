from pathlib import Path

from fusion_dag.artifacts import read_json, read_tsv, write_json, write_text
from fusion_dag.bundle import MANIFEST, calibration_files
from fusion_dag.card import card_markdown, model_card
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    bundle = Path(snakemake.input.bundle)
    manifest = read_json(bundle / MANIFEST)
    calibration = {
        name: read_json(bundle / calibration_files(name)[1])
        for name in manifest["combinations"]
        if calibration_files(name)[1] in manifest["files"]
    }
    sources = {
        key: snakemake.input[key]
        for key in ("headline", "comparisons", "subgroups", "temporal")
        if key in snakemake.input.keys()
    }
    subgroups = read_tsv(sources["subgroups"]) if "subgroups" in sources else None
    temporal = read_tsv(sources["temporal"]) if "temporal" in sources else None
    card = model_card(
        manifest,
        read_tsv(snakemake.input.headline),
        read_tsv(snakemake.input.comparisons),
        read_tsv(snakemake.input.samples),
        read_tsv(snakemake.input.images),
        snakemake.params.evaluation,
        sources,
        subgroups,
        calibration,
        temporal,
    )
    write_json(card, snakemake.output.json)
    write_text(card_markdown(card), snakemake.output.markdown)
    log.info("Model card of %s: %d known limits", bundle, len(card["limits"]))
    for limit in card["limits"]:
        log.info("  limit: %s", limit)
