rule ablation_fold:
    input:
        unpack(backbone_weights_input(lambda wildcards: PAIRS[wildcards.combination])),
        folds="results/folds/repeat{repeat}.tsv",
        metadata="results/metadata/repeat{repeat}/fold{fold}/probs.tsv",
        fit_probs="results/metadata/repeat{repeat}/fold{fold}/fit_probs.tsv",
        cache=lambda wildcards: f"results/prepared/images/{PAIRS[wildcards.combination]}.npy",
        views=lambda wildcards: f"results/prepared/{PAIRS[wildcards.combination]}_views.tsv",
    output:
        metrics="results/ablation/{combination}/repeat{repeat}/fold{fold}/metrics.tsv",
        probs="results/ablation/{combination}/repeat{repeat}/fold{fold}/probs.tsv",
    log:
        "logs/ablation_fold/{combination}/repeat{repeat}/fold{fold}.log",
    conda:
        "../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=480,
    params:
        classes=config["classes"],
        settings=lambda wildcards: MODALITY_SETTINGS[PAIRS[wildcards.combination]],
        weights=pair_weight_settings,
        seed=repeat_seed,
    script:
        "../scripts/ablation_fold.py"


rule aggregate_ablation:
    input:
        ablation=files_of(ablation_fold_files, "metrics"),
        v3=files_of(ablation_fold_files, "v3"),
        variant_probs=files_of(ablation_fold_files, "probs"),
        v3_oof=lambda wildcards: sorted(
            {record["v3_oof"] for record in ablation_fold_files(wildcards)}
        ),
        folds="results/folds.tsv",
    output:
        table=report(
            "results/ablation.tsv",
            caption="../report/ablation.rst",
            category="Ablation",
        ),
        markdown="results/ablation.md",
    log:
        "logs/aggregate_ablation/aggregate_ablation.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fold_files=ablation_fold_files,
        classes=config["classes"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
    script:
        "../scripts/aggregate_ablation.py"
