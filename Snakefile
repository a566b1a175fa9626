from snakemake.utils import min_version

min_version("9.0")


# The defaults live beside the workflow; --configfile files are merged over them.
configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/prepare.smk"
include: "rules/metadata.smk"
include: "rules/fusion.smk"


rule all:
    default_target: True
    input:
        rules.fusion_results.output,
