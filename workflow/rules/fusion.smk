# Each fold's probabilities of the combination, which oof pools.
FUSION_FOLD_FILES = partition_files(
    probs="results/fusion/{combination}/repeat{repeat}/fold{fold}/probs.tsv"
)
# Each fold's metrics record of the combination, which learned gathers.
FUSION_METRIC_FILES = partition_files(
    metrics="results/fusion/{combination}/repeat{repeat}/fold{fold}/metrics.json"
)


rule fusion:
    input:
        unpack(fusion_inputs),
        samples="results/prepared/samples.tsv",
    output:
        probs="results/fusion/{combination}/repeat{repeat}/fold{fold}/probs.tsv",
        metrics="results/fusion/{combination}/repeat{repeat}/fold{fold}/metrics.json",
    log:
        "logs/fusion/{combination}/repeat{repeat}/fold{fold}.log",
    benchmark:
        "benchmarks/fusion/{combination}/repeat{repeat}/fold{fold}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=config["classes"],
        settings=fusion_settings,
    script:
        "../scripts/fusion.py"


# Each row's validation prediction from the fold that held it out, per repeat.
rule oof:
    input:
        folds="results/folds.tsv",
        probs=files_of(FUSION_FOLD_FILES, "probs"),
    output:
        oof="results/fusion/{combination}/oof.tsv",
    log:
        "logs/oof/{combination}.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fold_files=FUSION_FOLD_FILES,
        classes=config["classes"],
    script:
        "../scripts/oof.py"


# With fusion.learn: what each fold's fusion learned (weights, temperature, visits chosen on).
rule learned:
    input:
        metrics=files_of(FUSION_METRIC_FILES, "metrics"),
    output:
        learned="results/fusion/{combination}/learned.tsv",
    log:
        "logs/learned/{combination}.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        fold_files=FUSION_METRIC_FILES,
        members=lambda wildcards: COMBINATIONS[wildcards.combination],
    script:
        "../scripts/learned.py"


rule aggregate_results:
    input:
        metrics=expand(
            "results/fusion/{combination}/repeat{repeat}/fold{fold}/metrics.json",
            combination=COMBINATIONS,
            repeat=REPEATS,
            fold=FOLDS,
        ),
        oof=expand("results/fusion/{combination}/oof.tsv", combination=COMBINATIONS),
        folds="results/folds.tsv",
        members=files_of(member_fold_files, "probs"),
        image_metrics=files_of(image_metric_files, "metrics"),
        plan=ANALYSIS_PLAN_FILE,
    output:
        # The report's front page, here unless evaluation.temporal (rule front_page).
        **front_page_output(),
        per_fold="results/fusion_results_per_fold.tsv",
        table=report(
            "results/fusion_results.tsv",
            caption="../report/fusion_results.rst",
            category="Results",
        ),
        markdown="results/fusion_results.md",
        comparisons=report(
            "results/comparisons.tsv",
            caption="../report/comparisons.rst",
            category="Results",
        ),
        comparisons_markdown="results/comparisons.md",
        calibration=report(
            "results/report/calibration.tsv",
            caption="../report/calibration.rst",
            category="Clinical report",
        ),
    log:
        "logs/aggregate_results/aggregate_results.log",
    benchmark:
        "benchmarks/aggregate_results/aggregate_results.tsv"
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        combinations=COMBINATIONS,
        classes=config["classes"],
        evaluation=config["evaluation"],
        fusion=config["fusion"],
        member_files=member_fold_files,
        image_files=image_metric_files,
        seed=config["cv"]["seed"],
        run=jobs.run_summary(config, MODALITIES),
    script:
        "../scripts/aggregate_results.py"


# With evaluation.temporal, the report's front page in a job of its own: it names the temporal
# difference, and the temporal table is computed from the headline aggregate_results writes.
# So with evaluation.temporal the fusion_results target runs the temporal partition too (one
# partition more, as final_models does for the model card). Without it, aggregate_results
# writes the page and the run has no job more.
if config["evaluation"]["temporal"]:

    rule front_page:
        input:
            headline="results/fusion_results.tsv",
            comparisons="results/comparisons.tsv",
            plan=ANALYSIS_PLAN_FILE,
            temporal="results/temporal.tsv",
        output:
            front_page=FRONT_PAGE,
        log:
            "logs/front_page/front_page.log",
        localrule: True
        conda:
            "../envs/tabular.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            evaluation=config["evaluation"],
            run=jobs.run_summary(config, MODALITIES),
        script:
            "../scripts/front_page.py"
