"""A job's log: Python logging and the process's stdout and stderr go to the job's file; an
input error is one line on the terminal, anything else keeps its traceback."""

import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"


def run_job(tmp_path, body: str):
    """Run ``body`` inside ``job_log`` in a fresh Python process (it redirects descriptors 1 and
    2, which must not happen to pytest's own); return the process and the log's text."""
    log = tmp_path / "job.log"
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(SCRIPTS)!r})
        from fusion_dag.artifacts import InputError
        from fusion_dag.joblog import job_log
        with job_log({str(log)!r}) as log:
        """
    ) + textwrap.indent(textwrap.dedent(body), "    ")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result, log.read_text()


def test_logging_prints_and_native_writes_all_reach_the_log_file(tmp_path):
    result, text = run_job(
        tmp_path,
        """
        log.info("hello %d", 42)
        print("from print")
        os.write(2, b"native stderr\\n")
        """,
    )
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    lines = text.splitlines()
    assert lines[0].endswith("INFO fusion_dag: hello 42")
    assert "from print" in lines and "native stderr" in lines


def test_an_input_error_is_one_line_on_the_terminal_and_exit_code_1(tmp_path):
    result, text = run_job(tmp_path, 'raise InputError("samples table lacks label")')
    assert result.returncode == 1
    assert result.stderr == "fusion-dag input error: samples table lacks label\n"
    assert "ERROR fusion_dag: samples table lacks label" in text and "Traceback" not in text


def test_any_other_error_keeps_its_traceback_in_the_log(tmp_path):
    result, text = run_job(tmp_path, 'raise RuntimeError("bug")')
    assert result.returncode == 1
    assert "ERROR fusion_dag: Job failed" in text
    assert "Traceback" in text and "RuntimeError: bug" in text


def test_a_second_job_appends_to_the_same_log(tmp_path):
    run_job(tmp_path, 'log.info("first")')
    _, text = run_job(tmp_path, 'log.info("second")')
    assert text.index("first") < text.index("second")


def test_a_refused_checkpoint_is_one_results_error_line(tmp_path):
    body = """
    from fusion_dag.checkpoint import CheckpointError
    raise CheckpointError("checkpoint c.h5 refused: sha256; delete c.h5 and run again")
    """
    result, text = run_job(tmp_path, body)
    assert result.returncode == 1
    assert result.stderr == (
        "fusion-dag results error: checkpoint c.h5 refused: sha256; delete c.h5 and run again\n"
    )
    assert "Traceback" not in text
