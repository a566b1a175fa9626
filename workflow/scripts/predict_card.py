from pathlib import Path

from fusion_dag.card import copy_card
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    card = Path(snakemake.input.markdown).parent
    destination = Path(snakemake.output.markdown).parent
    copy_card([card], destination)
    log.info("Model card copied from %s to %s", card, destination)
