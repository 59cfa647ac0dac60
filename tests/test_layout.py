"""The layout rules of docs/architecture.md, checked on the source: who may import whom, and no import loops.

Every import statement counts, also one inside a function. The rules:
- `medcm` outside `medcm/cli/` imports neither `db` nor `ui` (the CLI is the composition root);
- nothing imports `medcm.cli` but `medcm/cli/` itself and `medcm/__main__.py`;
- `db` imports neither `medcm` nor `ui`; `ui` does not import `pydicom`;
- no module takes another module's `_private` name (`from x import _y`, x a medcm/db/ui module).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medcm", "db", "ui")


def _load_import_loops():
    spec = importlib.util.spec_from_file_location("import_loops", ROOT / "scripts" / "import_loops.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


import_loops = _load_import_loops()


def _top(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layout_violations(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Each broken rule as "file:line: statement: why", in file order."""
    found = []
    for ref in import_loops.module_imports(root, packages):
        source, tops = ref.source, {_top(t) for t in ref.targets}
        why = []
        if _top(source) == "medcm" and not _within(source, "medcm.cli") and tops & {"db", "ui"}:
            why.append("medcm outside medcm/cli/ imports db or ui; only the composition root (medcm.cli) may")
        if (not _within(source, "medcm.cli") and source != "medcm.__main__"
                and any(_within(t, "medcm.cli") for t in ref.targets)):
            why.append("imports medcm.cli; nothing but medcm/__main__.py may (the CLI is the composition root)")
        if _top(source) == "db" and tops & {"medcm", "ui"}:
            why.append("db imports medcm or ui; the store imports neither (it joins the index on plain string ids)")
        if _top(source) == "ui" and "pydicom" in tops:
            why.append("ui imports pydicom; DICOM reading belongs in medcm.dicom")
        private = [n for n in ref.names if n.startswith("_") and not n.startswith("__")]
        if private and _top(ref.base) in PACKAGES:
            why.append(f"takes another module's private name(s) {', '.join(private)}; make them public or move them")
        found += [f"{ref.where(root)}: {ref.statement}: {reason}" for reason in why]
    return found


def test_the_tree_follows_the_layout_rules():
    violations = layout_violations(ROOT)
    assert not violations, "layout rules broken (see docs/architecture.md):\n" + "\n".join(violations)


def test_medcm_has_no_import_loops():
    modules = import_loops.module_files(ROOT, ("medcm", "db"))
    graph = import_loops.import_graph(import_loops.module_imports(ROOT, ("medcm", "db")), modules)
    cycles = import_loops.find_cycles(graph)
    assert not cycles, "import loops:\n" + "\n".join(import_loops.describe(c, graph, ROOT) for c in cycles)


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_medcm_loads_neither_store_nor_ui():
    code = "import json, sys, medcm; print(json.dumps(sorted(sys.modules)))"
    loaded = {_top(name) for name in json.loads(_run_python(code))}
    assert not loaded & {"db", "ui", "gradio", "sqlalchemy"}


def test_importing_every_library_module_loads_neither_store_nor_ui():
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import medcm
        names = [m.name for m in pkgutil.walk_packages(medcm.__path__, "medcm.")
                 if not m.name.startswith("medcm.cli") and m.name != "medcm.__main__"]
        for name in names:
            importlib.import_module(name)
        print(json.dumps([names, sorted(sys.modules)]))
    """)
    names, modules = json.loads(_run_python(code))
    assert "medcm.engine.facade" in names and "medcm.dicom.read" in names  # the walk found the library
    assert not {_top(name) for name in modules} & {"db", "ui", "gradio", "sqlalchemy"}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    _write(tmp_path, {
        "medcm/__init__.py": "",
        "medcm/__main__.py": "from medcm.cli.main import main\n",  # allowed
        "medcm/cli/__init__.py": "",
        "medcm/cli/main.py": "import db.store\nfrom ui import app\n\ndef main():\n    pass\n",  # allowed
        "medcm/engine/__init__.py": "",
        "medcm/engine/facade.py": (
            "from __future__ import annotations\n"
            "\n"
            "def open_store():\n"
            "    import db.store\n"  # line 4: inside a function still counts
            "    from .. import cli\n"  # line 5: relative import of medcm.cli
            "    return db.store\n"
        ),
        "medcm/engine/ingest.py": "from medcm.engine.facade import _helper\nfrom medcm.engine import __doc__\n",
        "db/__init__.py": "",
        "db/store.py": "from medcm.index import exact\n",
        "ui/__init__.py": "",
        "ui/study.py": "def read(path):\n    import pydicom.filereader\n    return pydicom.filereader.dcmread(path)\n",
        "ui/app.py": "from .study import read\nfrom ui.study import _cache as c\n",
    })
    found = layout_violations(tmp_path)
    expected = [
        ("db/store.py:1", "db imports medcm or ui"),
        ("medcm/engine/facade.py:4", "medcm outside medcm/cli/ imports db or ui"),
        ("medcm/engine/facade.py:5", "imports medcm.cli"),
        ("medcm/engine/ingest.py:1", "private name(s) _helper"),
        ("ui/app.py:2", "private name(s) _cache"),
        ("ui/study.py:2", "ui imports pydicom"),
    ]
    assert len(found) == len(expected), "\n".join(found)
    for line, (where, why) in zip(sorted(found), expected):
        assert line.startswith(where + ":") and why in line, line


def test_the_checker_passes_a_tree_that_follows_the_rules(tmp_path):
    _write(tmp_path, {
        "medcm/__init__.py": "",
        "medcm/__main__.py": "from medcm.cli import main\n",
        "medcm/cli/__init__.py": "def main():\n    import db\n    from ui import build_app\n",
        "db/__init__.py": "import sqlalchemy\n",
        "ui/__init__.py": "from medcm.dicom import read_image\n",
    })
    assert layout_violations(tmp_path) == []


@pytest.mark.parametrize(("files", "expected"), [
    pytest.param(  # through a function-level import and a package __init__
        {"medcm/__init__.py": "", "medcm/a.py": "def f():\n    from medcm import b\n",
         "medcm/b.py": "from . import a\n"},
        [["medcm.a", "medcm.b", "medcm.a"]], id="two-modules"),
    pytest.param(
        {"medcm/__init__.py": "", "medcm/p/__init__.py": "from medcm.p.x import X\n",
         "medcm/p/x.py": "from medcm.p import y\nX = 1\n", "medcm/p/y.py": ""},
        [["medcm.p", "medcm.p.x", "medcm.p"]], id="sibling-through-init"),
    pytest.param(
        {"medcm/__init__.py": "", "medcm/p/__init__.py": "from medcm.p.x import X\n",
         "medcm/p/x.py": "import medcm.p.y\nX = 1\n", "medcm/p/y.py": "from medcm.p.z import Z\n",
         "medcm/p/z.py": "Z = 2\n"},
        [], id="no-cycle"),
])
def test_import_loops_finds_cycles(tmp_path, files, expected):
    _write(tmp_path, files)
    modules = import_loops.module_files(tmp_path, ("medcm",))
    graph = import_loops.import_graph(import_loops.module_imports(tmp_path, ("medcm",)), modules)
    assert import_loops.find_cycles(graph) == expected
    assert import_loops.main(["--root", str(tmp_path), "medcm"]) == (1 if expected else 0)
