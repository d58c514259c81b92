"""The layer contracts in pyproject.toml (run by scripts/test through lint-imports) cover every
module: a new module must be placed in a layer, or nothing would check what it imports. The
modules type-checked strictly are exactly the pure core."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _layers() -> list[set[str]]:
    (contract,) = [c for c in CONFIG["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    assert contract["containers"] == ["syncer"]
    out = []
    for layer in contract["layers"]:
        sep = "|" if "|" in layer else ":"
        out.append({"syncer." + m.strip() for m in layer.split(sep)})
    return out


def _modules() -> set[str]:
    out = set()
    for p in (ROOT / "syncer").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue  # a package's own module: an empty docstring or re-exports of its children
        out.add(".".join(parts))
    return out


def _placed(module: str, entries: set[str]) -> bool:
    return any(module == e or module.startswith(e + ".") for e in entries)


def test_every_module_is_in_exactly_one_layer():
    layers = _layers()
    unplaced = sorted(m for m in _modules() if not any(_placed(m, layer) for layer in layers))
    assert not unplaced, f"place these in a layer of pyproject.toml: {unplaced}"
    twice = sorted(m for m in _modules() if sum(_placed(m, layer) for layer in layers) > 1)
    assert not twice
    listed = set().union(*layers)
    missing = sorted(e for e in listed if not any(m == e or m.startswith(e + ".") for m in _modules()))
    assert not missing, f"layers name modules that do not exist: {missing}"


def test_package_modules_import_only_their_children():
    """A package split across layers is placed through its children; its __init__ may only
    re-export them, or it would import past the contracts."""
    for p in (ROOT / "syncer").rglob("__init__.py"):
        package = ".".join(p.parent.relative_to(ROOT).parts)
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module and node.module.startswith(package + "."), (p, node.module)
            assert not isinstance(node, ast.Import), p


def test_the_strictly_typed_modules_are_the_pure_core():
    pure = _layers()[-1]
    (strict,) = [o for o in CONFIG["tool"]["mypy"]["overrides"] if o.get("disallow_untyped_defs")]
    typed = {m.removesuffix(".*") for m in strict["module"]}
    assert typed == pure
