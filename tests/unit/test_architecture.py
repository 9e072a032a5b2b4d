"""The layer rules of ARCHITECTURE.md, checked on the source: no import circle, no library
module importing a command, commands thin, no source file far above 400 lines."""

import ast
from pathlib import Path

import prunelab

SRC = Path(prunelab.__file__).resolve().parent
COMMANDS = {"prunelab.train", "prunelab.lottery", "prunelab.sensitivity", "prunelab.measure",
            "prunelab.export", "prunelab.report", "prunelab.search"}
#: The layers of ARCHITECTURE.md, lowest first: a module imports only its own layer and those below.
LAYERS = (
    ("errors", "files", "seeds", "losses", "schemas", "config", "graph", "metrics", "data",
     "models", "formatting", "datasets", "conf"),
    ("pruning", "compress", "module", "robust", "plots", "runs", "history"),
    ("assemble", "tickets", "deploy", "analysis", "results", "hardware", "distill", "pretrained",
     "posttrain", "control"),
    ("cli", "jobs", "policy_search"),
    ("train", "lottery", "sensitivity", "measure", "export", "report", "search",
     "hydra_callbacks"),
)
LIBRARY = ("prunelab.pruning", "prunelab.compress", "prunelab.metrics", "prunelab.data",
           "prunelab.models", "prunelab.graph", "prunelab.tickets", "prunelab.deploy",
           "prunelab.analysis", "prunelab.errors", "prunelab.files", "prunelab.policy_search")


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The prunelab modules a file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("prunelab") and name in modules:
                found.add(name)
    return found


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a circle
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + ".") or m.startswith(d + "."))}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles[:3]


def test_library_modules_import_no_command():
    modules = _modules()
    bad = {m: sorted(_imports(p, modules) & COMMANDS) for m, p in modules.items()
           if m.startswith(LIBRARY)}
    assert not {m: c for m, c in bad.items() if c}


def test_commands_are_thin_and_files_are_short():
    modules = _modules()
    long_commands = {m: n for m in COMMANDS
                     if (n := len(modules[m].read_text().splitlines())) > 200}
    assert not long_commands
    long_files = {m: n for m, p in modules.items() if (n := len(p.read_text().splitlines())) > 420}
    assert not long_files


def _layer(module: str) -> int:
    if module == "prunelab":
        return 0
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_imports_go_down_the_layers():
    modules = _modules()
    # the package root only re-exports prunelab.load_run, lazily
    up = {m: sorted(d for d in _imports(p, modules) if _layer(d) > _layer(m))
          for m, p in modules.items() if m != "prunelab"}
    assert not {m: d for m, d in up.items() if d}


def test_every_module_has_a_layer():
    top = {m.split(".")[1] for m in _modules() if m != "prunelab"}
    layered = {name for names in LAYERS for name in names}
    assert top <= layered, f"add to LAYERS: {sorted(top - layered)}"


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The prunelab modules a file imports when it is imported (not inside a function)."""
    found, todo = set(), list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n.startswith("prunelab") and n in modules}
        todo.extend(ast.iter_child_nodes(node))
    return found


def test_errors_and_files_import_nothing_of_prunelab():
    modules = _modules()
    assert _imports(modules["prunelab.errors"], modules) == set()
    assert _imports(modules["prunelab.files"], modules) == set()


def test_pruning_and_compress_do_not_import_each_other_at_import_time():
    modules = _modules()
    crossing = {m: sorted(d for d in _top_level_imports(p, modules)
                          if d.startswith(other))
                for m, p in modules.items()
                for own, other in (("prunelab.pruning", "prunelab.compress"),
                                   ("prunelab.compress", "prunelab.pruning"))
                if m.startswith(own)}
    assert not {m: d for m, d in crossing.items() if d}
    # and through any third module: importing one package loads nothing of the other
    import subprocess
    import sys

    for own, other in (("pruning", "compress"), ("compress", "pruning")):
        code = (f"import sys, prunelab.{own}; "
                f"print(sorted(m for m in sys.modules if m.startswith('prunelab.{other}')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "[]", (own, out.stdout)


def test_cli_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, prunelab.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
