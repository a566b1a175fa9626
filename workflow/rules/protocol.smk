# The protocol's screening rows of one repeat: per outer fold, label_screen's nested screen and
# the forest refit without the screened training visits; and the leaky screen (every visit's
# own out-of-fold forest probabilities, the flagged visits dropped, the forest cross-validated
# again on the rest). Only the forest is refit.
rule protocol_screen:
    input:
        samples="results/prepared/samples.tsv",
        folds="results/folds/repeat{repeat}.tsv",
        metadata=expand(
            "results/metadata/repeat{{repeat}}/fold{fold}/probs.tsv",
            fold=FOLDS,
        ),
    output:
        screened="results/protocol/repeat{repeat}/screened.tsv",
        probs="results/protocol/repeat{repeat}/metadata_probs.tsv",
    log:
        "logs/protocol_screen/repeat{repeat}.log",
    benchmark:
        "benchmarks/protocol_screen/repeat{repeat}.tsv"
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
        "../scripts/protocol_screen.py"


# Fixed, learned and leaky weights from the members' cached fold probabilities (no training),
# the screening rows from protocol_screen, each scored as the headline scores a combination.
rule aggregate_protocol:
    input:
        members=files_of(protocol_member_files, "probs"),
        screened=files_of(protocol_screen_files, "screened"),
        screen_probs=files_of(protocol_screen_files, "probs"),
        folds="results/folds.tsv",
    output:
        table=report(
            "results/protocol.tsv",
            caption="../report/protocol.rst",
            category="Protocol",
        ),
        markdown="results/protocol.md",
        oof="results/protocol/oof.tsv",
        choices="results/protocol/choices.tsv",
    log:
        "logs/aggregate_protocol/aggregate_protocol.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        member_files=protocol_member_files,
        screen_files=protocol_screen_files,
        combinations=COMBINATIONS,
        classes=config["classes"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
        settings=lambda wildcards: jobs.protocol_settings(config, COMBINATIONS),
    script:
        "../scripts/aggregate_protocol.py"
