"""Every command the README and docs show works as printed, in a fresh copy of the repository.

Commands that would train run as dry runs (``--dry-run`` appended): that checks the config
they use validates and that their targets build a DAG, in seconds. ``--report`` needs a finished
run, so its command is dry-run without ``--report``; the report itself is built from a real run
in tests/test_ablation.py. Config files the docs show (a ``yaml`` block whose first line is
``# name.yaml``) are written before the commands run, with empty stand-ins for the tables they
name (``samples`` and ``predict.samples``), relative to the config file's folder.
"""

import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.workflow

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shown(language: str) -> list:
    """(document, block) for every fenced block of ``language`` in the documents."""
    blocks = []
    for document in DOCUMENTS:
        for block in re.findall(rf"```{language}\n(.*?)```", document.read_text(), re.S):
            blocks.append((document.name, block))
    return blocks


def shown_commands() -> list:
    """Every command in a ``bash`` block, with ``&&`` chains split and comments dropped; a
    command several documents show is run once (with the first document that shows it)."""
    commands = {}
    for document, block in shown("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                for part in line.split("&&"):
                    commands.setdefault(part.strip(), document)
    return [(document, command) for command, document in commands.items()]


COMMANDS = shown_commands()


def test_the_docs_show_the_quick_start_and_the_test_command():
    commands = [command for _, command in COMMANDS]
    assert "snakemake --cores 8 fusion_results" in commands
    assert "python -m pytest" in commands


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the repository's tracked files, with the config files the docs show."""
    folder = tmp_path_factory.mktemp("clone") / "fusion-dag"
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target)
    for _, block in shown("yaml"):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# ([\w./-]+\.yaml)", first.strip())
        if match:
            config_file = folder / match.group(1)
            config_file.parent.mkdir(parents=True, exist_ok=True)
            config_file.write_text(block)
            shown_config = yaml.safe_load(block)
            tables = [shown_config.get("samples"), shown_config.get("predict", {}).get("samples")]
            for table in filter(None, tables):
                # Relative to the config's folder: the study folder a command's --directory names.
                (config_file.parent / table).parent.mkdir(parents=True, exist_ok=True)
                (config_file.parent / table).touch()
    return folder


@pytest.mark.parametrize(("document", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_command_works_as_printed(clone, document, command):
    words = shlex.split(command)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]  # an environment setting for the command (FUSION_DAG_SLURM_TEST=1)
    if words[0] == "pip":
        # CI runs the install itself; here the files it names must exist.
        for index, word in enumerate(words):
            if word == "-r":
                assert (clone / words[index + 1]).is_file(), f"{document}: {command}"
        return
    if words[:3] == ["python", "-m", "pytest"]:
        for path in words[3:]:
            assert (clone / path).exists(), f"{document}: {command}"
        return  # this very suite
    if words[0] == "python":
        result = subprocess.run(
            [sys.executable, *words[1:], "--help"], cwd=clone, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{document}: {command}\n{result.stderr[-2000:]}"
        return
    assert words[0] == "snakemake", f"{document}: unexpected command {command!r}"
    if "--report" in words:
        index = words.index("--report")
        del words[index : index + 2]
    dry = "--unlock" not in words and "--lint" not in words
    arguments = [*words[1:], "--dry-run"] if dry else words[1:]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *arguments],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{document}: {command}\n{output[-3000:]}"
    if dry:
        assert "This was a dry-run" in output or "Nothing to be done" in output, output[-2000:]


def test_the_readme_picture_is_the_workflow_s_own_rule_graph(clone):
    """The README's mermaid block is what the command it names prints (edges compared as a set:
    Snakemake prints them in no fixed order), so the picture cannot drift from the rules."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"`(snakemake --rulegraph mermaid-js \w+)`", readme).group(1)
    shown_graph = re.search(r"```mermaid\n(.*?)```", readme, re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-m", *shlex.split(command)],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    def lines(graph: str) -> set:
        return {line.strip() for line in graph.splitlines() if line.strip()}

    printed = lines(result.stdout)
    assert {line for line in printed if not line.startswith("style")} == lines(shown_graph)


def test_measured_figures_are_marked_for_the_script_that_writes_them():
    """The README quotes no run time; the wall times live in docs/benchmarks.md between the
    markers bench/quickstart.py fills, so a re-measure rewrites them in place."""
    readme = (REPO / "README.md").read_text()
    assert not re.search(r"\d+ min \d+ s", readme)
    benchmarks = (REPO / "docs" / "benchmarks.md").read_text()
    for name in ("quickstart", "suite"):
        assert re.search(rf"<!-- measured: {name} -->.+?<!-- /measured -->", benchmarks, re.S), name
    evaluation = (REPO / "docs" / "evaluation.md").read_text()
    assert "<!-- measured: demo-results -->" in evaluation
