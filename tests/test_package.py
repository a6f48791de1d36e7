"""The shape of the flux_delegate package: the pure modules never depend on
the job-manager layer, and only that layer imports delegate.so's module."""

import ast
import os
import subprocess
import sys

from flux_instance import PYTHONPATH

PACKAGE = os.path.join(PYTHONPATH, "flux_delegate")
PURE = sorted(
    name[:-3]
    for name in os.listdir(PACKAGE)
    if name.endswith(".py") and name != "__init__.py"
)


def imported_modules(path):
    """Every module a file imports, absolute (relative imports resolved
    against the package)."""
    with open(path) as fp:
        tree = ast.parse(fp.read(), path)
    package = os.path.relpath(os.path.dirname(path), PYTHONPATH).replace(os.sep, ".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_there_are_pure_modules():
    assert {"targets", "registry", "policies", "preflight", "jobspec", "eventlog"} <= set(PURE)


def test_pure_modules_import_nothing_of_the_job_manager_layer():
    for name in PURE:
        imports = imported_modules(os.path.join(PACKAGE, name + ".py"))
        bad = {m for m in imports if m.startswith("flux_delegate.jobmanager") or m == "delegate_jobtap"}
        assert not bad, f"flux_delegate.{name} imports {sorted(bad)}"


def test_only_the_job_manager_layer_imports_the_shims_module():
    for top, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(top, name)
            if "delegate_jobtap" in imported_modules(path):
                assert os.path.relpath(path, PACKAGE) == os.path.join("jobmanager", "entry.py")


def test_pure_modules_import_in_a_plain_python():
    """Without the broker (no delegate_jobtap) and with or without flux's
    bindings, as a command or a unit test imports them."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {PYTHONPATH!r})\n"
        + "".join(f"import flux_delegate.{name}\n" for name in PURE)
        + "loaded = sorted(m for m in sys.modules if m.startswith('flux_delegate.jobmanager')"
        " or m == 'delegate_jobtap')\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_make_install_installs_every_module():
    """src/python/Makefile.am lists every module of the package: one left
    out works from the tree and is missing once installed."""
    with open(os.path.join(PYTHONPATH, "Makefile.am")) as fp:
        listed = set(fp.read().split())
    missing = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(root, name), PYTHONPATH)
                if path not in listed:
                    missing.append(path)
    assert not missing, f"not in src/python/Makefile.am: {missing}"


#: The house's rooms (issue 21): no module over 600 lines, no class over
#: 300, no function over 60, in the package, the command and the handler.
MAX_FILE, MAX_CLASS, MAX_FUNCTION = 600, 300, 60


def house_files():
    """The tree's own (whatever DELEGATE_PYTHONPATH points at)."""
    tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    yield os.path.join(tree, "delegate_handler.py")
    yield os.path.join(tree, "src", "cmd", "flux-remote.py")
    for root, _, files in os.walk(os.path.join(tree, "src", "python", "flux_delegate")):
        yield from (os.path.join(root, n) for n in sorted(files) if n.endswith(".py"))


def oversized(path):
    with open(path) as fp:
        source = fp.read()
    found = []
    if source.count("\n") > MAX_FILE:
        found.append(f"{path}: {source.count(chr(10))} lines")
    for node in ast.walk(ast.parse(source, path)):
        limit = {ast.ClassDef: MAX_CLASS, ast.FunctionDef: MAX_FUNCTION}.get(type(node))
        if limit is not None and node.end_lineno - node.lineno + 1 > limit:
            found.append(f"{path}: {node.name}: {node.end_lineno - node.lineno + 1} lines")
    return found


def test_the_rooms_are_small():
    files = list(house_files())
    assert len(files) > 40 and all(os.path.exists(f) for f in files), files
    found = [line for path in files for line in oversized(path)]
    assert not found, "over the house's sizes:\n" + "\n".join(found)
