rule demo_data:
    output:
        table=DEMO_TABLE,
        thermal_table="resources/demo/thermal_images.csv",
        thermal=directory("resources/demo/thermal"),
        depth=directory("resources/demo/depth"),
        photo=directory("resources/demo/photo"),
    log:
        "logs/demo_data/demo_data.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        patients=config["demo"]["patients"],
        seed=config["demo"]["seed"],
        thermal_signal=config["demo"].get("thermal_signal", "default"),
    script:
        "../scripts/demo_data.py"
