rule demo_data:
    output:
        table=DEMO_TABLE,
        images=directory("resources/demo/thermal"),
    log:
        "logs/demo_data/demo_data.log",
    conda:
        "../envs/tabular.yaml"
    threads: job_resources("demo_data")["threads"]
    resources:
        mem_mb=job_resources("demo_data")["mem_mb"],
        runtime=job_resources("demo_data")["runtime"],
    params:
        patients=config["demo"]["patients"],
        seed=config["demo"]["seed"],
    script:
        "../workflow_scripts/demo_data.py"
