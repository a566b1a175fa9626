from fusion_dag.artifacts import read_tsv, write_json, write_tsv
from fusion_dag.evaluate import fit_kappa
from fusion_dag.folds import FINAL_PLACEMENT, final_fold_table
from fusion_dag.fusion import MEMBER_FILES, fuse_combination, read_image_member, tensorflow_runtime
from fusion_dag.joblog import job_log
from fusion_dag.learn import learned_fusion, temper_table
from fusion_dag.weights import METADATA, member_weights

with job_log(snakemake.log[0]) as log:
    members = snakemake.wildcards.combination.split("+")
    classes = snakemake.params.classes
    settings = snakemake.params.settings
    weights = member_weights(members, **settings["weights"])
    repeat, fold = FINAL_PLACEMENT
    samples = read_tsv(snakemake.input.samples)
    runtime = tensorflow_runtime(members, settings, snakemake.threads)
    image_members = {
        m: read_image_member({k: snakemake.input.get(f"{m}_{k}") for k in MEMBER_FILES}, branch)
        for m, branch in settings.get("branches", {}).items()
    }
    learned = None
    if settings.get("learn"):
        # Chosen on every labelled patient as each fold chooses on its training visits: the
        # forest's inner out-of-fold probabilities, the final branches' early-stopping visits.
        inputs = {
            "metadata_probs": read_tsv(snakemake.input.metadata_inner)
            if METADATA in members
            else None,
            "image_probs": {m: member.probs for m, member in image_members.items()},
            "folds": final_fold_table(samples),
            "image_split": settings["image_split"],
        }
        learned = learned_fusion(settings["learn"], members, inputs, fold, weights, classes)
        weights = learned["weights"]
    record = {"combination": snakemake.wildcards.combination, "weights": weights}
    if learned:
        record["weights_learned"] = learned["weights_learned"]
        record["temperature"] = learned["temperature"]
        record["learned_visits"] = learned["visits"]
    if runtime:
        record["runtime"] = runtime
    probs = fuse_combination(
        weights,
        read_tsv(snakemake.input.metadata) if METADATA in members else None,
        image_members,
        {"repeat": repeat, "fold": fold, "classes": classes},
        settings.get("batch_size"),
    )
    if learned and learned["temperature"]:
        probs = temper_table(probs, learned["temperature"], classes)
    record["n_rows"] = len(probs)
    record["fit_kappa"] = fit_kappa(probs, samples, classes)
    log.info(
        "Final %s: in-sample kappa %.3f on %d rows",
        record["combination"],
        record["fit_kappa"],
        record["n_rows"],
    )
    write_tsv(probs, snakemake.output.probs)
    write_json(record, snakemake.output.metrics)
