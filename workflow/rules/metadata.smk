# With label_screen: the fold's training visits whose given label the forest's inner
# out-of-fold probabilities make implausible (confident learning); they leave the fold's
# training in the metadata and image stages.
rule screen:
    input:
        samples="results/prepared/samples.tsv",
        folds="results/folds/repeat{repeat}.tsv",
    output:
        screen="results/screen/repeat{repeat}/fold{fold}.tsv",
    log:
        "logs/screen/repeat{repeat}/fold{fold}.log",
    benchmark:
        "benchmarks/screen/repeat{repeat}/fold{fold}.tsv"
    conda:
        "../envs/tabular.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        classes=config["classes"],
        settings=config["metadata_model"],
        seed=repeat_seed,
    script:
        "../scripts/screen.py"


rule metadata:
    input:
        unpack(screen_input),
        samples="results/prepared/samples.tsv",
        folds="results/folds/repeat{repeat}.tsv",
    output:
        probs="results/metadata/repeat{repeat}/fold{fold}/probs.tsv",
        model="results/metadata/repeat{repeat}/fold{fold}/model.skops",
        fit_probs="results/metadata/repeat{repeat}/fold{fold}/fit_probs.tsv",
    log:
        "logs/metadata/repeat{repeat}/fold{fold}.log",
    benchmark:
        "benchmarks/metadata/repeat{repeat}/fold{fold}.tsv"
    conda:
        "../envs/tabular.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        classes=config["classes"],
        settings=config["metadata_model"],
        seed=repeat_seed,
    script:
        "../scripts/metadata.py"
