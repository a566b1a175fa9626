"""The conda environments must pin exactly what requirements.txt pins."""

import re

import yaml

from tests.conftest import REPO


def pins(lines) -> dict:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*(#.*)?", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_conda_envs_agree_with_requirements():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip_lists = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
        assert pip_lists, f"{env.name} has no pip section"
        pinned = pins(pip_lists[0])
        assert len(pinned) == len(pip_lists[0]), f"{env.name}: every package must be pinned"
        for name, version in pinned.items():
            assert required.get(name) == version, f"{env.name}: {name}=={version} vs requirements"


def test_every_rule_environment_exists():
    for rules in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*"\.\./(envs/[^"]+)"', rules.read_text()):
            assert (REPO / env).is_file(), f"{rules.name} names missing {env}"
