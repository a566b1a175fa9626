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
