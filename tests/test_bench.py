"""The benchmark script's report helpers: RESULTS.md sections and target verdicts."""

import pytest

from bench.run import against, replace_section

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
