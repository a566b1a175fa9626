# A new table checked against the model spec before any model is loaded (or trained).
rule predict_table:
    input:
        unpack(predict_image_tables),
        table=predict_samples,
        spec=predict_spec,
    output:
        samples="results/predict/samples.tsv",
        images="results/predict/images.tsv",
    log:
        "logs/predict_table/predict_table.log",
    priority: 50
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        samples=config["predict"]["samples"],
        bundle=predict_bundle(),
        given_bundle=bool(config["predict"]["bundle"]),
        image_dirs=PREDICT_IMAGE_DIRS,
        image_tables=config["predict"]["images"] or {},
        combination=config["predict"]["combination"],
    script:
        "../scripts/predict_table.py"


rule predictions:
    input:
        unpack(predict_bundle_input),
        samples="results/predict/samples.tsv",
        images="results/predict/images.tsv",
    output:
        predictions="results/predict/predictions.tsv",
        metrics="results/predict/metrics.tsv",
        summary=report(
            "results/predict/summary.md",
            caption="../report/predictions.rst",
            category="Prediction",
        ),
    log:
        "logs/predictions/predictions.log",
    benchmark:
        "benchmarks/predictions/predictions.tsv"
    conda:
        "../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        combination=config["predict"]["combination"],
        coverage=config["predict"]["coverage"],
        # Where the bundle's model card is looked for (copied beside the predictions; not an
        # input, so predict never waits for the cross-validation the card reports).
        card_folders=card_sources(predict_bundle(), DEFAULT_BUNDLE),
        intra_op_threads=config["image_model"]["intra_op_threads"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
    script:
        "../scripts/predict.py"
