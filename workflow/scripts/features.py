from fusion_dag.cache import load_cache
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.branch import configure_tensorflow
    from fusion_dag.features import build_feature_cache

    modality = snakemake.wildcards.modality
    settings = snakemake.params.settings
    images, views = load_cache(snakemake.input.cache, snakemake.input.views)
    # The seed decides a random initialisation only; pretrained features involve no randomness.
    seed = 0 if settings["seed"] is None else settings["seed"]
    configure_tensorflow(settings["intra_op_threads"], snakemake.threads, seed)
    sidecar = build_feature_cache(
        images, modality, len(snakemake.params.classes), settings, dict(snakemake.output.items())
    )
    log.info(
        "Cached %s features of %d %s views (%d variant(s) each%s) at %d px, %d channel(s); "
        "backbone weights %s, sha256 %s...",
        sidecar["dimension"],
        sidecar["views"],
        modality,
        1 + sidecar["flip"],
        ": the view and its horizontal flip" if sidecar["flip"] else "",
        sidecar["size"],
        sidecar["channels"],
        sidecar["weights_source"] or "randomly initialised (seeded)",
        sidecar["backbone_sha256"][:12],
    )
