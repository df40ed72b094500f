"""The layers, read from the source with `ast` (nothing is imported):

- textclf/ (shipped in every .mar) imports none of train/, benchmarks/, serving/, handlers/, nor TorchServe
  (ts), scikit-learn, matplotlib or tqdm;
- train/ imports nothing from benchmarks/ or serving/: what they share lives in textclf/ (textclf.machine,
  textclf.config.read_model_config);
- pyproject.toml brings every third-party package the distribution's folders import, with the specifiers
  of requirements.txt (the pin set setup.sh installs).
"""
import ast
import re
import sys
import tomllib
from importlib import metadata
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

FORBIDDEN = {
    "textclf": {"train", "benchmarks", "serving", "handlers", "loadtest", "ts", "sklearn", "matplotlib", "tqdm"},
    "train": {"benchmarks", "serving", "handlers"},
}
LOCAL = {"textclf", "train", "serving", "protocol", "loadtest", "benchmarks", "handlers", "tests"}
# the folders pyproject.toml's dependencies are for (handlers/ runs inside TorchServe, on its Python)
DISTRIBUTED = ("textclf", "train", "serving", "protocol", "loadtest", "benchmarks")
# imported through another name than the distribution's: torch.utils.tensorboard needs tensorboard
IMPLIED = {"torch.utils.tensorboard": "tensorboard"}


def imports(path):
    """(line, dotted module) of every absolute import in a file, at any depth (lazy imports too), plus
    importlib.import_module("...") with a constant name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def sources(folder):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    assert sources(layer), f"no Python files in {layer}/"
    wrong = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
             for path in sources(layer) for line, module in imports(path)
             if module.split(".")[0] in FORBIDDEN[layer]]
    assert not wrong, "\n".join(wrong)


def test_the_import_check_sees_lazy_and_dynamic_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from serving.torchserve import archive\n"
                    "    import importlib\n    return importlib.import_module('benchmarks.common')\n")
    assert [m for _, m in imports(path)] == ["os", "serving.torchserve", "importlib", "benchmarks.common"]


def requirement_lines(path):
    return [Requirement(re.sub(r"\s+#.*", "", line).strip()) for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared():
    """Every requirement of pyproject.toml: the dependencies and each extra's."""
    p = project()
    return [Requirement(r) for r in p["dependencies"]] + \
        [Requirement(r) for extra in p["optional-dependencies"].values() for r in extra]


def test_pyproject_and_requirements_txt_pin_alike():
    pins = {canonicalize_name(r.name): r for r in requirement_lines(ROOT / "requirements.txt")}
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"pyproject.toml declares {req}, which requirements.txt (the tested set) lacks"
        assert req.specifier == pins[name].specifier and req.extras == pins[name].extras, \
            f"pyproject.toml: {req}; requirements.txt: {pins[name]}"
    missing = set(pins) - {canonicalize_name(r.name) for r in declared()} - {"setuptools"}
    assert not missing, f"in requirements.txt, not in pyproject.toml: {sorted(missing)}"


def installed_with(requirements):
    """The distributions that installing `requirements` brings: them and, through the installed metadata, what
    they require in turn (the extras each asks for included)."""
    seen, todo = set(), [(canonicalize_name(r.name), set(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in needs:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return seen


def test_pyproject_declares_what_the_code_imports():
    """Every third-party import of the distribution's folders comes with pyproject.toml's requirements (declared,
    or required by a declared one: protocol/ imports typing_extensions, which pydantic brings)."""
    by_module = packages_distributions()
    names = installed_with(declared())
    undeclared = []
    for folder in DISTRIBUTED:
        for path in sources(folder):
            for line, module in imports(path):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in LOCAL:
                    continue
                dists = [IMPLIED.get(module)] if module in IMPLIED else by_module.get(top, [top])
                if not names & {canonicalize_name(d) for d in dists}:
                    undeclared.append(f"{path.relative_to(ROOT)}:{line}: {module} ({', '.join(dists)})")
    assert not undeclared, "imported, not declared in pyproject.toml:\n" + "\n".join(undeclared)


def test_textclf_runs_on_the_core_dependencies():
    """What textclf imports at module level (not inside a function) is in [project] dependencies."""
    by_module = packages_distributions()
    core = {canonicalize_name(Requirement(r).name) for r in project()["dependencies"]}
    wrong = []
    for path in sources("textclf"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for module in names:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in LOCAL:
                    continue
                if not core & {canonicalize_name(d) for d in by_module.get(top, [top])}:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    assert not wrong, "textclf imports at load time what [project] dependencies lack:\n" + "\n".join(wrong)
