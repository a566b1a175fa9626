rule demo_data:
    output:
        table=DEMO_TABLE,
        images=directory("resources/demo/thermal"),
    log:
        "logs/demo_data/demo_data.log",
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        patients=config["demo"]["patients"],
        seed=config["demo"]["seed"],
    script:
        "../workflow_scripts/demo_data.py"
