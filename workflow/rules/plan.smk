# The pre-specified primary family, alpha and test rule (docs/evaluation.md, "The analysis
# plan"). Its priority makes it the first job; no training rule reads it, so a change of
# evaluation.confidence or of the family re-runs it and the tables, never a model. The record
# is updated in place: a changed plan keeps the ones it replaced.
rule analysis_plan:
    output:
        plan=update(ANALYSIS_PLAN_FILE),
    log:
        "logs/analysis_plan/analysis_plan.log",
    priority: 100
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        plan=ANALYSIS_PLAN,
    script:
        "../scripts/analysis_plan.py"
