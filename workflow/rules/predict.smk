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
        # input, so predict never waits for the cross-validation the card reports; when this
        # invocation builds the card too, predict_card copies it once it exists).
        card_folders=card_sources(predict_bundle(), DEFAULT_BUNDLE),
        intra_op_threads=config["image_model"]["intra_op_threads"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
    script:
        "../scripts/predict.py"


# The run's own model card copied beside the predictions when this invocation builds the card
# too (final_models, all or the card itself requested with predict): predictions copies the
# card it finds when it runs, and in one invocation it can run before model_card. Only then:
# the card reports the cross-validation, so making every predict wait for it would run the
# whole cross-validation for a plain `snakemake predict` (the bundle alone needs none). A given
# bundle (predict.bundle) keeps its card in its folder, which predictions copies.
rule predict_card:
    input:
        markdown="results/final/model_card.md",
        json="results/final/model_card.json",
        # After predictions, whose own copy (of no card yet) must not remove this one.
        predictions="results/predict/predictions.tsv",
    output:
        markdown="results/predict/model_card.md",
        json="results/predict/model_card.json",
    log:
        "logs/predict_card/predict_card.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/predict_card.py"
