from datetime import UTC, datetime

from fusion_dag.artifacts import write_json
from fusion_dag.joblog import job_log
from fusion_dag.plan import plan_changes, plan_record, recorded_plan

with job_log(snakemake.log[0]) as log:
    path = snakemake.output.plan
    on_record = recorded_plan(path)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    record = plan_record(on_record, snakemake.params.plan, now)
    if on_record is not None and record is not on_record:
        log.warning(
            "The analysis plan differs from the one written %s, which it replaces (kept under "
            "'earlier'): %s",
            on_record["written"],
            "; ".join(plan_changes(on_record["plan"], record["plan"])),
        )
    write_json(record, path)
    log.info(
        "Analysis plan: primary family %s, alpha %g",
        record["plan"]["primary_family"]["contrasts"],
        record["plan"]["alpha"],
    )
