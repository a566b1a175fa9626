import platform
from datetime import UTC, datetime

from fusion_dag.artifacts import read_json, read_tsv, write_json
from fusion_dag.joblog import job_log
from fusion_dag.provenance import data_hashes, git_state, job_runtimes, package_versions

with job_log(snakemake.log[0]) as log:
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": snakemake.params.config,
        "workflow": git_state(snakemake.params.workflow_dir),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "data": data_hashes(snakemake.input.table, read_tsv(snakemake.input.images)),
        "jobs": job_runtimes({path: read_json(path) for path in snakemake.input.metrics}),
        # The pre-specified family, alpha and test rule, with every earlier plan it replaced.
        "analysis_plan": read_json(snakemake.input.plan),
    }
    write_json(record, snakemake.output.provenance)
    log.info("Provenance: commit %s, data %s", record["workflow"]["commit"], record["data"])
