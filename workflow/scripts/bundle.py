import platform

from fusion_dag.artifacts import read_json, read_tsv
from fusion_dag.bundle import (
    calibration_records,
    check_collapsed,
    collapsed_branches,
    training_patients,
    with_learned_fusion,
    write_bundle,
)
from fusion_dag.joblog import job_log
from fusion_dag.provenance import data_hashes, git_state, package_versions

with job_log(snakemake.log[0]) as log:
    modalities, allow = snakemake.params.modalities, snakemake.params.allow_collapsed
    branch_probs = {m: read_tsv(snakemake.input[f"{m}_probs"]) for m in modalities}
    collapsed = collapsed_branches(branch_probs, snakemake.params.classes)
    check_collapsed(collapsed, allow)
    for modality, name in collapsed.items():
        log.warning(
            "Final image branch %s predicts class %s for every training row; bundled anyway "
            "(final.allow_collapsed: true, recorded in the manifest)",
            modality,
            name,
        )
    checks = [read_json(path) for path in snakemake.input.fusion_metrics]
    coverage, calibration = snakemake.params.coverage, None
    if coverage is not None:
        oof = {c: read_tsv(snakemake.input[f"{c}_oof"]) for c in snakemake.params.combinations}
        calibration = calibration_records(oof, snakemake.params.classes, coverage)
        for name, (_, summary) in calibration.items():
            measured = summary["cross_validated"]
            log.info(
                "Prediction sets of %s at coverage %.2f in cross-validation: coverage %.3f, "
                "mean set size %.2f (%d visits)",
                name,
                coverage,
                measured["set_coverage"],
                measured["set_size"],
                measured["visits"],
            )
    provenance = {
        "workflow": git_state(snakemake.params.workflow_dir),
        "python": platform.python_version(),
        "packages": package_versions(),
        "data": data_hashes(snakemake.input.table, read_tsv(snakemake.input.images)),
        "final_fusion": {
            c["combination"]: {"fit_kappa": c["fit_kappa"], "weights": c["weights"]} for c in checks
        },
    }
    manifest = write_bundle(
        snakemake.output.bundle,
        with_learned_fusion(read_json(snakemake.input.spec), checks),
        snakemake.input.get("forest"),
        {
            m: (snakemake.input[f"{m}_checkpoint"], snakemake.input[f"{m}_sidecar"])
            for m in modalities
        },
        snakemake.params.config,
        provenance,
        {"collapsed_branches": collapsed, "allow_collapsed": allow},
        training_patients(read_tsv(snakemake.input.samples)["group"]),
        calibration,
    )
    log.info("Bundle %s: %d files", snakemake.output.bundle, len(manifest["files"]))
    log.info("Training patients recorded as salted SHA-256 hashes of their group ids")
    for relative, digest in manifest["files"].items():
        log.info("  %s sha256 %s", relative, digest)
