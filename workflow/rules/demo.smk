rule demo_data:
    output:
        table=DEMO_TABLE,
        thermal_table="resources/demo/thermal_images.csv",
        new_table=DEMO_NEW_TABLE,
        new_thermal_table=DEMO_NEW_IMAGE_TABLE,
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
        new_patients=config["demo"]["new_patients"],
        thermal_signal=config["demo"].get("thermal_signal", "default"),
    script:
        "../scripts/demo_data.py"
