"""The conda environments must pin exactly what requirements.txt pins."""

import re

import yaml

from tests.conftest import REPO

SCRIPTS = REPO / "workflow/scripts"


def pins(lines) -> dict:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*(#.*)?", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_conda_envs_agree_with_requirements():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    envs = sorted((REPO / "workflow/envs").glob("*.yaml"))
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
    for rules in (REPO / "workflow/rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*"\.\./(envs/[^"]+)"', rules.read_text()):
            assert (REPO / "workflow" / env).is_file(), f"{rules.name} names missing {env}"


# Import name -> the package that provides it, for every third-party import in the code.
PROVIDERS = {
    "numpy": "numpy",
    "pandas": "pandas",
    "sklearn": "scikit-learn",
    "joblib": "joblib",
    "skops": "skops",
    "keras": "keras",
    "tensorflow": "tensorflow-cpu",
    "h5py": "h5py",
    "PIL": "pillow",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "crepes": "crepes",
    "statsmodels": "statsmodels",
    "tableone": "tableone",
    "dcurves": "dcurves",
    "cleanlab": "cleanlab",
}


def imported_packages(path, seen=None) -> set:
    """Top-level packages a file imports, following fusion_dag modules (function-level imports
    included: a rule that reaches them at run time needs them)."""
    import ast
    import sys

    seen = set() if seen is None else seen
    if path in seen:
        return set()
    seen.add(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top == "fusion_dag":
                module = SCRIPTS / (name.replace(".", "/") + ".py")
                found |= imported_packages(module, seen)
            elif top not in sys.stdlib_module_names:
                found.add(top)
    return found


def rule_environments() -> dict:
    """Rule -> (conda env file, script file) for every rule with both."""
    rules = {}
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            name = re.match(r"rule (\w+):", block)
            env = re.search(r'conda:\s*"\.\./(envs/[^"]+)"', block)
            script = re.search(r'script:\s*"\.\./([^"]+)"', block)
            if name and env and script:
                rules[name.group(1)] = (
                    SCRIPTS.parent / env.group(1),
                    SCRIPTS.parent / script.group(1),
                )
    return rules


def test_every_rule_environment_provides_what_its_script_imports():
    rules = rule_environments()
    assert {"prepare", "metadata", "image", "fusion", "provenance"} <= set(rules)
    for rule, (env, script) in rules.items():
        spec = yaml.safe_load(env.read_text())
        pip_list = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        provided = set(pins(pip_list))
        needed = imported_packages(script)
        unknown = needed - set(PROVIDERS)
        assert not unknown, f"{script.name} imports {unknown}: add them to PROVIDERS"
        missing = {PROVIDERS[m] for m in needed} - provided
        assert not missing, f"rule {rule} runs {script.name} in {env.name}, which lacks {missing}"
