from fusion_dag.artifacts import read_json, write_tsv
from fusion_dag.bundle import choose_combination, load_bundle
from fusion_dag.joblog import job_log
from fusion_dag.predict_table import new_samples

with job_log(snakemake.log[0]) as log:
    # A given bundle is verified whole (a missing or edited manifest is one line); the bundle
    # this run builds is checked against the spec it will hold.
    given = snakemake.params.given_bundle
    spec = load_bundle(snakemake.params.bundle) if given else read_json(snakemake.input.spec)
    members = choose_combination(spec, snakemake.params.combination)
    image_dir, modality_dirs = snakemake.params.image_dirs
    samples, images = new_samples(
        snakemake.params.samples,
        image_dir,
        spec,
        members,
        snakemake.params.image_tables,
        modality_dirs,
    )
    write_tsv(images, snakemake.output.images)
    write_tsv(samples, snakemake.output.samples)
    log.info(
        "New table %s: %d rows, %d groups, %s labels; scored by %s",
        snakemake.params.samples,
        len(samples),
        samples["group"].nunique(),
        "with" if samples["label"].notna().any() else "no",
        "+".join(members),
    )
