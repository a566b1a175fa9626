"""Logging for one Snakemake job: everything to the job's log file, input errors in one line.

Why: Snakemake keeps one log per job (``logs/{rule}/...``), and TensorFlow writes straight to
the process's stderr, so both Python logging and file descriptors 1 and 2 are sent to the log.
A bad input (:class:`~fusion_dag.artifacts.InputError`), or a results file a job cannot use
(:class:`~fusion_dag.artifacts.ArtifactError`), is reported as a single line, in the log and on
the terminal, instead of a traceback; anything else keeps its traceback for debugging.
"""

import contextlib
import logging
import os
import sys

from fusion_dag.artifacts import InputError


@contextlib.contextmanager
def job_log(path: str):
    """Route this job's output to ``path`` for the duration of the block."""
    terminal = os.fdopen(os.dup(2), "w")
    with open(path, "a", buffering=1) as log_file:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        logging.basicConfig(
            stream=log_file,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        try:
            yield logging.getLogger("fusion_dag")
        except InputError as error:
            logging.getLogger("fusion_dag").error("%s", error)
            print(f"fusion-dag {error.heading}: {error}", file=terminal, flush=True)
            sys.exit(1)
        except Exception:
            logging.getLogger("fusion_dag").exception("Job failed")
            raise
