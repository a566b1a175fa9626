from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.bundle import choose_combination, combination_fusion, load_bundle
from fusion_dag.explain import row_contributions
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.branch import configure_tensorflow
    from fusion_dag.heatmaps import new_visit_heatmaps

    bundle = snakemake.input.bundle
    spec = load_bundle(bundle)
    members = choose_combination(spec, snakemake.params.combination)
    predictions = read_tsv(snakemake.input.predictions, dtype={"predicted": str})
    predictions["predicted"] = predictions["predicted"].fillna("")
    scored = predictions[predictions["predicted"] != ""]
    write_tsv(
        row_contributions(scored, members, spec["classes"], combination_fusion(spec, members)[0]),
        snakemake.output.contributions,
    )
    configure_tensorflow(snakemake.params.intra_op_threads, snakemake.threads, seed=0)
    new_visit_heatmaps(
        bundle,
        spec,
        members,
        predictions,
        read_tsv(snakemake.input.images),
        snakemake.output.heatmaps,
    )
