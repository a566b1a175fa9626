"""The benchmark scripts: their report helpers (RESULTS.md sections, target verdicts), and that
each script CI runs starts."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import against, replace_section

REPO = Path(__file__).resolve().parent.parent
# The bench scripts .ci/run runs after the suite, each by its path.
CI_SCRIPTS = re.findall(r"python3 (bench/\w+\.py)", (REPO / ".ci" / "run").read_text())

RESULTS = "# Benchmarks\n\nIntro.\n\n## Demo size\n\nold demo\n\n## Scale: study\n\nold study\n"


def test_a_section_is_replaced_in_place_keeping_a_blank_line_before_the_next():
    updated = replace_section(RESULTS, "## Demo size", "## Demo size\n\nnew demo\n")
    assert updated == RESULTS.replace("old demo", "new demo")


def test_the_last_section_is_replaced_and_a_new_one_appended():
    updated = replace_section(RESULTS, "## Scale: study", "## Scale: study\n\nnew study\n")
    assert updated == RESULTS.replace("old study", "new study")
    appended = replace_section(RESULTS, "## Scale: 4x", "## Scale: 4x\n\nfour times\n")
    assert appended == RESULTS + "\n## Scale: 4x\n\nfour times\n"


@pytest.mark.parametrize(
    ("ratio", "target", "at_most", "verdict"),
    [
        (0.051, 0.05, True, "0.051 (target <= 0.05: missed)"),
        (0.05, 0.05, True, "0.050 (target <= 0.05: met)"),
        (0.97, 0.95, False, "0.970 (target >= 0.95: met)"),
        (0.94, 0.95, False, "0.940 (target >= 0.95: missed)"),
    ],
)
def test_a_ratio_is_printed_with_its_target_and_whether_it_was_met(ratio, target, at_most, verdict):
    assert against(ratio, target, at_most) == verdict


def test_a_measured_span_is_rewritten_in_place_and_a_missing_marker_is_an_error():
    from bench.quickstart import duration, fill

    text = "It took <!-- measured: suite -->9 min<!-- /measured --> on 2 cores."
    assert fill(text, "suite", "8 min 1 s") == text.replace("9 min", "8 min 1 s")
    with pytest.raises(ValueError, match="quickstart"):
        fill(text, "quickstart", "1 s")
    assert duration(276.4) == "4 min 36 s"
    assert duration(59.6) == "1 min 0 s"
    assert duration(12) == "12 s"


@pytest.mark.parametrize("script", CI_SCRIPTS)
def test_each_bench_script_ci_runs_resolves_its_imports(script):
    """``--help`` runs a script's module-level imports (its sibling bench modules among them)
    and stops before any work: a missing module fails here, not after the suite in CI."""
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_ci_runs_the_bench_scripts_it_names():
    assert len(CI_SCRIPTS) >= 8
    assert all((REPO / script).is_file() for script in CI_SCRIPTS)


def test_the_external_bench_section_shows_the_temporal_table_and_the_sets_from_the_run(tmp_path):
    import json

    import pandas as pd

    from bench.external import later_section

    (tmp_path / "results/predict").mkdir(parents=True)
    (tmp_path / "results/final/bundle/calibration").mkdir(parents=True)
    fused = "metadata+thermal_map"
    temporal = pd.DataFrame(
        {
            "combination": ["metadata", fused],
            "n_train_patients": 84,
            "n_train_visits": 300,
            "n_patients": 36,
            "n_rows": [134, 130],
            "kappa": [0.21, 0.25],
            "kappa_ci_low": [0.1, 0.12],
            "kappa_ci_high": [0.3, 0.37],
            "cv_kappa": [0.3, 0.33],
            "cv_kappa_ci_low": [0.2, 0.22],
            "cv_kappa_ci_high": [0.4, 0.44],
        }
    )
    temporal["kappa_diff"] = temporal["kappa"] - temporal["cv_kappa"]
    temporal.to_csv(tmp_path / "results/temporal.tsv", sep="\t", index=False)
    card = {"performance": {"confidence": 0.95}}
    (tmp_path / "results/final/model_card.json").write_text(json.dumps(card))
    metrics = pd.DataFrame(
        {"predictor": [fused, "metadata"], "n_rows": [141, 141], "set_coverage": [0.922, None]}
    ).assign(set_size=[1.87, None])
    metrics.to_csv(tmp_path / "results/predict/metrics.tsv", sep="\t", index=False)
    record = {"cross_validated": {"coverage": 0.9, "visits": 434, "set_coverage": 0.905}}
    record["cross_validated"]["set_size"] = 1.7
    (tmp_path / f"results/final/bundle/calibration/{fused}.json").write_text(json.dumps(record))
    section = later_section(tmp_path, "snakemake --cores 2 temporal final_models predict", 75)
    assert "the 84 earlier training patients (300 visits), scored on the 36 later" in section
    rows = [line for line in section.splitlines() if line.startswith("| metadata")]
    assert [row.split("|")[1].strip() for row in rows] == ["metadata", fused]
    assert "| 36 (130)" in rows[1] and "0.250 [0.120, 0.370]" in rows[1]
    assert "0.330 [0.220, 0.440]" in rows[1] and rows[1].rstrip(" |").endswith("-0.080")
    assert "kappa later (95 % CI)" in section and "1 min 15 s" in section
    assert f"Prediction sets of {fused} at coverage 0.9:" in section
    cv = next(line for line in section.splitlines() if line.startswith("| cross-validation"))
    new = next(line for line in section.splitlines() if line.startswith("| the new patients"))
    assert [cell.strip() for cell in cv.split("|")[2:5]] == ["434", "0.905", "1.70"]
    assert [cell.strip() for cell in new.split("|")[2:5]] == ["141", "0.922", "1.87"]
