from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


# The defaults live beside the workflow; --configfile files are merged over them.
configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/prepare.smk"
include: "rules/metadata.smk"
include: "rules/image.smk"
include: "rules/fusion.smk"
include: "rules/report.smk"
include: "rules/ablation.smk"


# The target: the headline tables and every trained model. Listing the models here means a
# deleted checkpoint is retrained (with its fusion jobs) on the next run instead of being
# treated as a finished intermediate file.
rule fusion_results:
    default_target: True
    input:
        rules.aggregate_results.output,
        trained_models,
        report_figures,
        "results/provenance.json",


# The V1/V2/V3 ablation on the same folds and seeds as fusion_results.
rule ablation:
    input:
        rules.aggregate_ablation.output,
