"""The package's layering: no module imports one of a higher layer (checked by parsing every import)."""

import ast
from pathlib import Path

import racemarl

ROOT = Path(racemarl.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("envs",),  # the environments import nothing of the rest
    ("config", "device", "precision"),  # the typed config; devices and host-to-device copies; fp32/bf16
    ("nets",),
    ("data",),  # the two replay buffers
    ("algorithms",),  # MATD3, FACMAC, RACE (continuous, discrete), evolution
    ("acting",),  # rollouts and rollout workers
    ("records",),  # run folders, checkpoints, metrics, trackers
    ("train",),  # the training loop
    ("experiment",),  # evaluate, sweep, presets, plot, report, stats
    ("api", "cli", "__main__", "__init__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def top_part(module: str) -> str:
    """'racemarl.acting.rollout' -> 'acting'; '' for anything outside racemarl."""
    parts = module.split(".")
    if parts[0] != "racemarl":
        return ""
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                pkg = path.relative_to(ROOT.parent).with_suffix("").parts[: -node.level]
                base = ".".join(pkg + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            if base == "racemarl":  # `from racemarl import x`: x is a module or a name of the package
                out += [(node.lineno, f"racemarl.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, base))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((node.lineno, arg.value))
    return out


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        own = top_part(".".join(("racemarl",) + path.relative_to(ROOT).with_suffix("").parts))
        assert own in LAYER, f"{path.relative_to(ROOT)} is in no layer: add it to LAYERS"


def test_no_import_runs_upwards():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = top_part(".".join(("racemarl",) + rel.with_suffix("").parts))
        for lineno, module in imported_modules(path):
            target = top_part(module)
            if target and target in LAYER and LAYER[target] > LAYER[own]:
                wrong.append(f"{rel}:{lineno} imports {module} (layer {target!r} is above {own!r})")
            elif target and target not in LAYER and target != "__version__":
                wrong.append(f"{rel}:{lineno} imports {module}, which is in no layer")
    assert not wrong, "\n".join(wrong)


def test_the_root_holds_only_the_entry_points():
    root_modules = sorted(p.stem for p in ROOT.glob("*.py"))
    assert root_modules == [
        "__init__",
        "__main__",
        "api",
        "device",
        "precision",
        "train",
    ]  # and the config/ and cli/ packages


def test_every_folder_of_modules_is_a_package():
    """`[tool.setuptools.packages.find]` installs only folders with an `__init__.py`."""
    for folder in {p.parent for p in ROOT.rglob("*.py")}:
        assert (folder / "__init__.py").is_file(), f"{folder.relative_to(ROOT.parent)} has no __init__.py"
