"""The package's shape: imports flow one way between subpackages (no cycle, even through imports inside functions),
and no module reaches for another module's private names (tests and benchmarks included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones: a subpackage may import only those listed before it.
LAYERS = ["config", "parallel", "model", "data", "ckpt", "generate", "serve", "eval", "train", "sweep", "report", "cli"]


def modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "sftjax").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """Every sftjax module ``path`` imports, at module level or inside functions."""

    def owner(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sftjax"):
            found |= {owner(f"{node.module}.{a.name}") for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("sftjax")}
    return found - {""}


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_flow_one_way_between_subpackages():
    known = modules()
    wrong = []
    for name, path in known.items():
        here = subpackage(name)
        if here not in LAYERS:
            continue
        for target in imported_modules(path, known):
            there = subpackage(target)
            if there in LAYERS and there != here and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{name} imports {target} ({here} is below {there})")
    assert not wrong, "\n".join(wrong)
    assert {subpackage(n) for n in known} - {""} <= set(LAYERS), "a new subpackage needs its place in LAYERS"


def test_no_private_names_are_imported_across_modules():
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    wrong = []
    for path in [*(ROOT / "sftjax").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        aliases = set()  # names bound to sftjax modules here
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sftjax"):
                wrong += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}" for a in node.names
                          if private(a.name)]
                aliases |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("sftjax")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def called_functions(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


def test_one_model_loader_one_renderer_one_batch_contract():
    """Weights reach devices through ckpt.init_from.load_model only; prompts are rendered by data.templates only;
    batch rows are built by data.batch only. A second implementation would show up as a second caller of the
    low-level pieces below."""
    owners = {
        "load_hf_params": {"sftjax/ckpt/init_from.py", "sftjax/ckpt/hf.py"},
        "restore_params": {"sftjax/ckpt/init_from.py", "sftjax/ckpt/checkpoints.py"},
        "apply_chat_template": {"sftjax/data/templates.py"},
        "empty_row": {"sftjax/data/batch.py", "sftjax/data/packing.py", "sftjax/data/pipeline.py"},
    }
    wrong = []
    for path in (ROOT / "sftjax").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        for name in called_functions(path) & set(owners):
            if rel not in owners[name]:
                wrong.append(f"{rel} calls {name}")
    assert not wrong, "\n".join(wrong)
