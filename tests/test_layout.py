"""The house rules of the packages' layout, checked on their source: no import cycles (imports inside functions
and under TYPE_CHECKING count too), no room too big, the device runtime never reaches into the toolkit or torch, each target limit
written once, no comment pointing at a file this repository does not have, and a repository that speaks of itself
alone (no issue or work-period numbers, no "today", no notes it does not hold)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import lkca_deploy
import lkca_runtime

PACKAGE = Path(lkca_deploy.__file__).parent
RUNTIME = Path(lkca_runtime.__file__).parent
REPO = PACKAGE.parent
SOURCES = (PACKAGE, RUNTIME)


def _modules() -> dict[str, Path]:
    mods = {}
    for package in SOURCES:
        for path in package.rglob("*.py"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every module `name` imports, wherever the import statement sits (a type-only import is a dependency too:
    a reader follows it the same way)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in mods and m != name}


def test_no_module_imports_another_in_a_cycle():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert cycles == []


def _lines(paths) -> int:
    return sum(len(path.read_text().splitlines()) for path in paths)


def test_no_module_is_over_700_lines():
    assert not [f"{m}: {_lines([m])}" for package in SOURCES for m in package.rglob("*.py") if _lines([m]) > 700]


def test_no_subpackage_of_the_toolkit_holds_over_12_percent_of_its_lines():
    """A room that grows past it is doing two jobs. (The device runtime is mostly its backends, one module per
    backend, by design; its rule is the module size above.)"""
    total = _lines(PACKAGE.rglob("*.py"))
    shares = {sub.name: _lines(sub.rglob("*.py")) / total for sub in PACKAGE.iterdir() if (sub / "__init__.py").exists()}
    assert not {name: f"{share:.1%}" for name, share in shares.items() if share > 0.12}


def test_a_library_a_machine_may_lack_is_imported_through_one_helper():
    """lkca_runtime.optional turns a missing library into one line saying what to install; nothing else catches
    ImportError (but the CLI's fallback to click itself under an older typer)."""
    catching = {path.relative_to(REPO).as_posix() for package in SOURCES for path in package.rglob("*.py")
                if re.search(r"except \(?(ImportError|ModuleNotFoundError)", path.read_text())}
    assert catching == {"runtime/lkca_runtime/optional.py", "lkca_deploy/cli/__init__.py"}


def test_the_device_runtime_imports_neither_the_toolkit_nor_torch():
    """Never the toolkit; the heavy libraries never at module level (TensorRT may borrow an installed PyTorch's
    CUDA allocator inside a function, where cuda-python is missing)."""
    heavy = ("torch", "torchvision", "nncf", "onnxsim", "sklearn", "matplotlib", "typer")
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = set(tree.body)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for n in names:
                root = n.split(".")[0]
                if root == "lkca_deploy" or (root in heavy and node in top):
                    offenders.append(f"{path.relative_to(REPO)}: {n}")
    assert offenders == []


def test_each_hardware_kernel_limit_is_a_number_in_one_module():
    for limit in ("DLA_KERNEL_LIMIT", "NPU_KERNEL_LIMIT"):
        defined = [p for p in PACKAGE.rglob("*.py") if re.search(rf"^{limit} = \d+", p.read_text(), re.MULTILINE)]
        assert [p.name for p in defined] == ["targets.py"], limit
    # The numbers themselves as kernel limits (a tile size, a "-tap limit") appear nowhere else.
    pattern = re.compile(r"(\b(32|11)-tap\b|tiled:(32|11)\b|max-kernel (32|11)\b|Capability\((32|11),)")
    offenders = [p.name for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_code_and_docs_name_only_files_this_repository_has():
    """Paths cited in code, tests, benchmarks, tools, README and docs exist (CHANGELOG names old paths on purpose)."""
    cited = re.compile(r"\b((?:docs|benchmarks|tools|tests|lkca_deploy|lkca_runtime|runtime)/[\w./-]+\.(?:md|py|txt))"
                       r"|\b(DESIGN\.md)\b")
    # Prose also cites upstream files (onnx-tensorrt's operators page): there, only this repository's own folders,
    # and not inside a longer path.
    cited_in_prose = re.compile(r"(?<![\w/.-])((?:benchmarks|tools|tests|lkca_deploy|runtime)/[\w./-]+\.(?:md|py|txt))"
                                r"|\b(DESIGN\.md)\b")
    missing = []
    texts = [*PACKAGE.rglob("*.py"), *RUNTIME.rglob("*.py"), *(REPO / "tests").rglob("*.py"), REPO / "README.md",
             *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.py"), *(REPO / "tools").glob("*")]
    for path in (p for p in texts if p.is_file()):
        pattern = cited_in_prose if path.suffix == ".md" else cited
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in pattern.finditer(line):
                name = match.group(1) or match.group(2)
                if not any((base / name).exists() for base in (REPO, PACKAGE, RUNTIME, RUNTIME.parent)):
                    missing.append(f"{path.relative_to(REPO)}:{number}: {name}")
    assert missing == []


# The words of how the code was built rather than what it is. Written in pieces so this file does not match itself.
HISTORY_WORDS = "session [0-9]|sessions [0-9]|issue [0-9]+|issue #[0-9]+|research" " note|today" "'s"


def test_the_repository_speaks_of_itself_alone():
    """`git grep -niE HISTORY_WORDS -- . | grep -v InferenceSession` prints nothing: a figure says its date or the
    command that measures it, a goal says the goal, an upstream thread is cited as owner/repo#N."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    found = subprocess.run(["git", "grep", "-niE", HISTORY_WORDS, "--", "."], cwd=REPO, capture_output=True,
                           text=True, check=False)
    assert found.returncode in (0, 1), found.stderr  # 1: no match
    lines = [line for line in found.stdout.splitlines() if "InferenceSession" not in line]
    assert lines == []


def test_own_modules_are_imported_at_the_top_except_where_a_module_must_stay_light():
    """A reader sees a module's dependencies at its top. The exceptions, each for a promise: the CLI's commands load
    their work when run (`--help`, `predict` and `verify` import no torch or onnx), the packages load the Predictor
    on first use, and the runtime reads ONNX files only where the onnx package is installed."""
    allowed_modules = ("lkca_runtime.onnx_io", "lkca_runtime.backends.base", "lkca_runtime.predictor", "lkca_runtime")
    offenders = []
    for package in SOURCES:
        for path in package.rglob("*.py"):
            if path.parent.name == "cli" and path.parent.parent == PACKAGE:
                continue
            tree = ast.parse(path.read_text())
            top = {id(n) for stmt in tree.body for n in ast.walk(stmt) if isinstance(stmt, (ast.Try, ast.If))}
            top |= {id(n) for n in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and id(node) not in top and not node.level:
                    module = node.module or ""
                    if module.split(".")[0] in ("lkca_deploy", "lkca_runtime") and module not in allowed_modules:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
    assert offenders == []


# Facts written once: (what, a pattern that writes the fact itself, the one file allowed to).
ONE_HOME = [
    ("an engine's name and folder", r"'-' \+ \w*\[?'?quantizer", "runtime/lkca_runtime/bundle.py"),
    ("the calibration sample count", r"(?i)samples\w*\s*(:\s*\w+\s*)?=\s*512\b|option\(512\b", "lkca_deploy/calibration/__init__.py"),
    ("the accuracy-aware INT8 bound", r"max_drop\W.*\b0\.5\b|DEFAULT_MAX_DROP = ", "lkca_deploy/precision/__init__.py"),
    ("the backend -> target map", r"\"onnxruntime\": \"onnxruntime-cpu\"", "lkca_deploy/targets.py"),
    ("the task names", r"\(\"classification\", \"segmentation\"\)", "runtime/lkca_runtime/spec.py"),
    ("the precision order", r"\(\"fp32\", \"fp16\", \"bf16\", \"int8\"\)\s*$", "runtime/lkca_runtime/backends/base.py"),
    ("each task's metric name", r"\"classification\": \"top-1\"", "runtime/lkca_runtime/spec.py"),
    ("the segmentation ignore label", r"IGNORE_INDEX = ", "runtime/lkca_runtime/spec.py"),
]


@pytest.mark.parametrize(("what", "pattern", "home"), ONE_HOME, ids=[row[0] for row in ONE_HOME])
def test_each_shared_fact_is_written_in_one_place(what, pattern, home):
    found = sorted({str(path.relative_to(REPO)) for package in SOURCES for path in package.rglob("*.py")
                    if any(re.search(pattern, line) for line in path.read_text().splitlines()
                           if not line.lstrip().startswith("#"))})
    assert found == [home], what
