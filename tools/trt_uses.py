"""Every TensorRT name a source file reaches: `trt.X`, `trt.X.Y`, methods and properties of the TensorRT objects it
can trace, methods its subclasses of TensorRT classes override; each with where, and under which version gates.

A small abstract interpreter over the AST, run to a fixed point: values made by TensorRT are followed through
assignments, `self` attributes, calls of local functions and classes, and returns. What a TensorRT call returns is
known for the calls in FACTORIES; attribute uses on other TensorRT results are kept as "unattributed".

Gates: a use inside `if hasattr(<trt value>, "NAME")` is guarded at run time. Elsewhere the code says which versions
run a line with a comment on that line (or on the header of the block or def it starts):
    # trt-api: <11 uses BuilderFlag.FP16 BuilderFlag.INT8 (why, in words)
`<11` (comma-joined comparisons such as `>=10.8,<11`) gates the block; `uses` names what a getattr with a name
computed at run time can reach. A local function called only from gated lines inherits their gate.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trt_bindings import IDENTIFIER, parse_version

from lkca_runtime.errors import UserError

_COMPARE = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _padded(a: tuple[int, ...], n: int) -> tuple[int, ...]:
    return a + (0,) * (n - len(a))


def version_matches(version: str, spec: str) -> bool:
    """Does `version` fall in `spec` ('<11', '>=10.8,<11')? A bare major compares as major.0.0 ('<11' excludes 11.0)."""
    v = parse_version(version)
    for clause in spec.split(","):
        m = re.fullmatch(r"\s*(<=|>=|==|!=|<|>)\s*([0-9][0-9.]*)\s*", clause)
        if not m:
            raise ValueError(f"not a version gate: {clause!r} (use e.g. <11 or >=10.8,<11)")
        bound = parse_version(m.group(2))
        n = max(len(v), len(bound))
        if not _COMPARE[m.group(1)](_padded(v, n), _padded(bound, n)):
            return False
    return True


@dataclass(frozen=True)
class Pragma:
    """A `# trt-api:` comment: the versions that run the line's block, and names a dynamic getattr can reach."""

    versions: str | None
    uses: tuple[str, ...] = ()


def parse_pragma(comment: str) -> Pragma | None:
    """'# trt-api: <11 uses BuilderFlag.FP16 (why)' -> Pragma('<11', ('BuilderFlag.FP16',)); None if not one."""
    m = re.match(r"#\s*trt-api:\s*(.*)$", comment.strip())
    if not m:
        return None
    text = re.sub(r"\([^)]*\)", " ", m.group(1))  # a reason in parentheses is for the reader
    words = text.split()
    versions = None
    if words and words[0][0] in "<>=!":
        versions = words.pop(0)
        version_matches("1", versions)  # refuse a malformed gate now, not at verdict time
    uses: tuple[str, ...] = ()
    if words and words[0] == "uses":
        uses = tuple(words[1:])
        bad = [u for u in uses if not all(IDENTIFIER.fullmatch(p) for p in u.split("."))]
        if bad or not uses:
            raise ValueError(f"`uses` takes dotted TensorRT names, got {words[1:]}")
    elif words:
        raise ValueError(
            f"cannot read the trt-api comment {comment.strip()!r}: say `<11`, `uses X.Y`, or both"
        )
    if versions is None and not uses:
        raise ValueError(f"empty trt-api comment: {comment.strip()!r}")
    return Pragma(versions, uses)


def pragmas_by_line(source: str, filename: str = "<source>") -> dict[int, Pragma]:
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            try:
                pragma = parse_pragma(tok.string)
            except ValueError as e:
                raise UserError(f"{filename}:{tok.start[0]}: {e}") from None
            if pragma is not None:
                found[tok.start[0]] = pragma
    return found


# ---------------------------------------------------------------- the scan


# What a TensorRT call returns, where the next calls on it are made: (class, method) -> class.
FACTORIES = {
    ("Builder", "create_network"): "INetworkDefinition",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("Builder", "build_serialized_network"): "IHostMemory",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("ITimingCache", "serialize"): "IHostMemory",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("ICudaEngine", "serialize"): "IHostMemory",
    ("OnnxParser", "get_error"): "ParserError",
}


@dataclass(frozen=True)
class Value:
    """What an expression holds, as far as TensorRT goes."""

    # "module": tensorrt; "class": trt.X; "object": a TensorRT object of class `type` (None: not traced);
    # "function": trt.f; "method": a bound TensorRT method ("Class.name"); "local", "localclass", "localmethod":
    # an instance, class or bound method of this file's own code (by qualified name).
    kind: str
    type: str | None = None


MODULE = Value("module")


@dataclass(frozen=True)
class Use:
    """One name the code reaches in TensorRT."""

    # The TensorRT class it is used on; None for trt.X, or when the object could not be traced.
    owner: str | None
    name: str
    kind: str  # "module", "member", "method", "property", "property-set", "override", "unattributed", "declared"
    where: str  # file:line
    gates: tuple[str, ...] = ()  # version specs, and "hasattr" for a run-time presence check

    @property
    def label(self) -> str:
        if self.kind == "module":
            return f"trt.{self.name}"
        if self.kind == "member":
            return f"trt.{self.owner}.{self.name}"
        if self.kind == "declared":
            return f"trt.{self.owner}.{self.name}" if self.owner else f"trt.{self.name}"
        suffix = {"method": "()", "property-set": " (set)", "override": " (override)"}.get(self.kind, "")
        return f"{self.owner or '?'}.{self.name}{suffix}"

    @property
    def names(self) -> tuple[str, ...]:
        """The names that must exist in the bindings for this use: the owner too for trt.X.Y."""
        owned = self.kind in ("member", "declared", "override") and self.owner
        return (self.owner, self.name) if owned else (self.name,)

    @property
    def attributed(self) -> bool:
        return self.kind != "unattributed"


@dataclass
class _Function:
    node: ast.FunctionDef | ast.AsyncFunctionDef
    cls: str | None  # the local class it is a method of
    params: dict[str, Value] = field(default_factory=dict)
    returns: Value | None = None
    call_gates: list[tuple[str, ...]] = field(default_factory=list)


class _Module:
    """Traces TensorRT values through one source file: a small abstract interpreter, run to a fixed point."""

    def __init__(self, source: str, filename: str):
        self.source, self.filename = source, filename
        self.tree = ast.parse(source, filename)
        self.pragmas = pragmas_by_line(source, filename)
        self.functions: dict[str, _Function] = {}  # by qualified name ("f", "C.m", "f.<locals>.g")
        self.classes: dict[str, dict[str, str]] = {}  # local class -> its methods' qualified names
        self.class_attrs: dict[str, dict[str, Value]] = {}
        self.trt_bases: dict[str, str] = {}  # local class -> the TensorRT class it subclasses
        self.module_aliases = {"trt"}  # names bound to the tensorrt module
        self.uses: set[Use] = set()
        self.recording = False
        self.changed = False
        self._collect(self.tree.body, prefix="", cls=None)

    # -- structure

    def _collect(self, body: list[ast.stmt], prefix: str, cls: str | None) -> None:
        """Register every function and class, nested ones too (inside defs, ifs, trys, withs, loops)."""
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}{node.name}"
                self.functions[qual] = _Function(node, cls)
                if cls is not None:
                    self.classes[cls][node.name] = qual
                self._collect(node.body, f"{qual}.<locals>.", None)
            elif isinstance(node, ast.ClassDef):
                qual = f"{prefix}{node.name}"
                self.classes[qual] = {}
                self.class_attrs[qual] = {}
                self._collect(node.body, f"{qual}.", qual)
            elif isinstance(node, ast.Import):
                self.module_aliases |= {a.asname or "tensorrt" for a in node.names if a.name == "tensorrt"}
            else:
                for part in ("body", "orelse", "finalbody"):
                    self._collect(getattr(node, part, []), prefix, cls)
                for handler in getattr(node, "handlers", []):
                    self._collect(handler.body, prefix, cls)

    def uses_tensorrt(self) -> bool:
        return any(isinstance(n, ast.Name) and n.id in self.module_aliases for n in ast.walk(self.tree))

    # -- the fixed point

    def run(self) -> set[Use]:
        for _ in range(20):
            self.changed = False
            self._pass()
            if not self.changed:
                break
        self.recording = True
        self._pass()
        return self.uses

    def _pass(self) -> None:
        self._block(self.tree.body, {}, (), scope="")
        effective: dict[str, tuple[str, ...]] = {}
        for qual, fn in self.functions.items():  # outer functions come before the ones they define
            env = dict(fn.params)
            if fn.cls is not None and fn.node.args.args:
                env.setdefault(fn.node.args.args[0].arg, Value("local", fn.cls))
            for arg in self._params(fn.node):
                env.setdefault(arg, MODULE if arg in self.module_aliases else None)
            outer = effective.get(qual.rpartition(".<locals>.")[0], ()) if ".<locals>." in qual else ()
            own = self._inherited_gates(fn) + self._pragma_gates(fn.node)
            gates = effective[qual] = outer + tuple(g for g in own if g not in outer)
            self._block(fn.node.body, env, gates, scope=f"{qual}.<locals>.")
            if fn.cls in self.trt_bases and fn.node.name not in ("__init__",):
                self._record(
                    Use(self.trt_bases[fn.cls], fn.node.name, "override", self._where(fn.node), gates)
                )

    @staticmethod
    def _params(node) -> list[str]:
        a = node.args
        return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]

    def _inherited_gates(self, fn: _Function) -> tuple[str, ...]:
        """The gates every call site of a local function shares (none when it is never called here)."""
        if not fn.call_gates:
            return ()
        common = set(fn.call_gates[0]).intersection(*map(set, fn.call_gates[1:]))
        return tuple(g for g in fn.call_gates[0] if g in common)

    def _pragma_gates(self, node: ast.AST) -> tuple[str, ...]:
        pragma = self.pragmas.get(node.lineno)
        return (pragma.versions,) if pragma and pragma.versions else ()

    # -- statements

    def _block(self, body: list[ast.stmt], env: dict, gates: tuple[str, ...], scope: str) -> None:
        for stmt in body:
            self._stmt(stmt, env, gates, scope)

    def _stmt(self, stmt: ast.stmt, env: dict, gates: tuple[str, ...], scope: str) -> None:
        pragma = self.pragmas.get(stmt.lineno)
        if pragma is not None:
            gates = gates + ((pragma.versions,) if pragma.versions else ())
            for dotted in pragma.uses:
                owner, _, name = dotted.rpartition(".")
                self._record(Use(owner or None, name, "declared", self._where(stmt), gates))
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for deco in stmt.decorator_list:
                self._expr(deco, env, gates)
            return  # its body runs when called: walked as a function of its own
        if isinstance(stmt, ast.ClassDef):
            qual = f"{scope}{stmt.name}"
            for base in stmt.bases:
                value = self._expr(base, env, gates)
                if value is not None and value.kind == "class" and qual in self.classes:
                    self.trt_bases[qual] = value.type
            env[stmt.name] = Value("localclass", qual)
            return
        if isinstance(stmt, ast.If):
            guarded = self._hasattr_guard(stmt.test, env, gates)
            self._expr(stmt.test, env, gates)
            self._block(stmt.body, env, gates + (("hasattr",) if guarded else ()), scope)
            self._block(stmt.orelse, env, gates, scope)
            return
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            self._expr(stmt.iter, env, gates)
            self._bind(stmt.target, None, env, gates)
            self._block(stmt.body, env, gates, scope)
            self._block(stmt.orelse, env, gates, scope)
            return
        if isinstance(stmt, ast.While):
            self._expr(stmt.test, env, gates)
            self._block(stmt.body, env, gates, scope)
            self._block(stmt.orelse, env, gates, scope)
            return
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                value = self._expr(item.context_expr, env, gates)
                if item.optional_vars is not None:
                    self._bind(item.optional_vars, value, env, gates)
            self._block(stmt.body, env, gates, scope)
            return
        if isinstance(stmt, ast.Try):
            self._block(stmt.body, env, gates, scope)
            for handler in stmt.handlers:
                if handler.type is not None:
                    self._expr(handler.type, env, gates)
                self._block(handler.body, env, gates, scope)
            self._block(stmt.orelse, env, gates, scope)
            self._block(stmt.finalbody, env, gates, scope)
            return
        if isinstance(stmt, ast.Assign):
            value = self._expr(stmt.value, env, gates)
            for target in stmt.targets:
                self._bind(target, value, env, gates)
            return
        if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            value = self._expr(stmt.value, env, gates) if stmt.value is not None else None
            self._bind(stmt.target, value if isinstance(stmt, ast.AnnAssign) else None, env, gates)
            return
        if isinstance(stmt, ast.Return):
            value = self._expr(stmt.value, env, gates) if stmt.value is not None else None
            fn = self.functions.get(scope[: -len(".<locals>.")]) if scope else None
            if fn is not None and value is not None and fn.returns != value:
                fn.returns, self.changed = value, True
            return
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if isinstance(stmt, ast.Import) and alias.name == "tensorrt":
                    env[alias.asname or "tensorrt"] = MODULE
            return
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.expr):
                self._expr(child, env, gates)

    def _hasattr_guard(self, test: ast.expr, env: dict, gates) -> bool:
        for node in ast.walk(test):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "hasattr"
                and len(node.args) == 2
                and self._expr(node.args[0], env, gates, record=False) is not None
            ):
                return True
        return False

    def _bind(self, target: ast.expr, value: Value | None, env: dict, gates) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, ast.Attribute):
            owner = self._expr(target.value, env, gates)
            if owner is not None and owner.kind == "local":
                attrs = self.class_attrs.setdefault(owner.type, {})
                if value is not None and attrs.get(target.attr) != value:
                    attrs[target.attr], self.changed = value, True
            elif owner is not None and owner.kind == "object":
                self._record(self._member_use(owner, target.attr, "property-set", target, gates))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._bind(element.value if isinstance(element, ast.Starred) else element, None, env, gates)
        else:
            self._expr(target, env, gates)

    # -- expressions

    def _expr(self, node: ast.expr | None, env: dict, gates, record: bool = True) -> Value | None:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in self.module_aliases:
                return MODULE
            if node.id in self.classes:
                return Value("localclass", node.id)
            return None
        if isinstance(node, ast.Attribute):
            return self._attribute(node, env, gates, record, called=False)
        if isinstance(node, ast.Call):
            return self._call(node, env, gates, record)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = dict(env)
            for comp in node.generators:
                self._expr(comp.iter, inner, gates, record)
                self._bind(comp.target, None, inner, gates)
                for cond in comp.ifs:
                    self._expr(cond, inner, gates, record)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for part in parts:
                self._expr(part, inner, gates, record)
            return None
        if isinstance(node, ast.Lambda):
            return None
        if isinstance(node, ast.IfExp):
            self._expr(node.test, env, gates, record)
            a = self._expr(node.body, env, gates, record)
            b = self._expr(node.orelse, env, gates, record)
            return a if a == b else None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child, env, gates, record)
        return None

    def _attribute(self, node: ast.Attribute, env, gates, record: bool, called: bool) -> Value | None:
        owner = self._expr(node.value, env, gates, record)
        if owner is None or (node.attr.startswith("__") and owner.kind != "module"):
            return None  # Python's own (trt.X.__init__), not TensorRT's; trt.__version__ is the package's
        return self._attribute_of(owner, node.attr, node, gates, record, called)

    def _attribute_of(
        self, owner: Value, attr: str, node: ast.AST, gates, record: bool, called: bool = False
    ):
        """trt.X is a class (capitalised) or a function; trt.X.Y an enum member or class attribute; obj.y a
        method or property of the TensorRT object, typed when FACTORIES knows what made it."""
        if owner.kind == "module":
            if record:
                self._record(Use(None, attr, "module", self._where(node), gates))
            return Value("class", attr) if attr[:1].isupper() else Value("function", attr)
        if owner.kind == "class":
            if record:
                self._record(Use(owner.type, attr, "member", self._where(node), gates))
            return Value("object", None)
        if owner.kind == "object":
            if record:
                self._record(self._member_use(owner, attr, "method" if called else "property", node, gates))
            if called:
                return Value("method", f"{owner.type}.{attr}" if owner.type else attr)
            return Value("object", None)
        if owner.kind == "local":
            if attr in self.classes.get(owner.type, {}):
                return Value("localmethod", self.classes[owner.type][attr])
            return self.class_attrs.get(owner.type, {}).get(attr)
        return None

    def _member_use(self, owner: Value, attr: str, kind: str, node: ast.AST, gates) -> Use:
        if owner.type is None:
            return Use(None, attr, "unattributed", self._where(node), gates)
        return Use(owner.type, attr, kind, self._where(node), gates)

    def _call(self, node: ast.Call, env, gates, record: bool) -> Value | None:
        if isinstance(node.func, ast.Attribute):
            func = self._attribute(node.func, env, gates, record, called=True)
        else:
            func = self._expr(node.func, env, gates, record)
        args = [
            self._expr(a.value if isinstance(a, ast.Starred) else a, env, gates, record) for a in node.args
        ]
        kwargs = {k.arg: self._expr(k.value, env, gates, record) for k in node.keywords}
        if (
            isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and node.args
            and args[0] is not None
            and args[0].kind in ("module", "class", "object")
        ):
            return self._getattr(node, args[0], gates, record)
        if func is None:
            fn = self._local_function(node.func.id, env) if isinstance(node.func, ast.Name) else None
            if fn is not None:
                self._bind_call(fn, args, kwargs, gates)
                return fn.returns
            return None
        if func.kind == "class":  # trt.Builder(...) makes a Builder
            return Value("object", func.type)
        if func.kind == "method":
            owner, _, method = func.type.rpartition(".")
            made = FACTORIES.get((owner, method))
            return Value("object", made)  # an untraced TensorRT result: its type is None
        if func.kind == "localclass":
            init = self.classes.get(func.type, {}).get("__init__")
            if init:
                self._bind_call(self.functions[init], [Value("local", func.type), *args], kwargs, gates)
            return Value("local", func.type)
        if func.kind == "localmethod":
            fn = self.functions[func.type]
            self._bind_call(fn, [Value("local", fn.cls), *args], kwargs, gates)
            return fn.returns
        return None

    def _getattr(self, node: ast.Call, owner: Value, gates, record: bool) -> Value | None:
        """getattr(trt.X, "Y") is trt.X.Y; a name computed at run time can only be declared (a `uses` pragma)."""
        name = node.args[1] if len(node.args) > 1 else None
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return self._attribute_of(owner, name.value, node, gates, record)
        if record and not self._declared_at(node.lineno):
            label = owner.type if owner.kind in ("class", "object") else None
            self._record(Use(label, "<computed>", "unattributed", self._where(node), gates))
        return Value("object", None) if owner.kind == "class" else None

    def _declared_at(self, line: int) -> bool:
        """A `uses` pragma on this line or on the header of a block around it names what the getattr reaches."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.stmt) and node.lineno <= line <= (node.end_lineno or node.lineno):
                pragma = self.pragmas.get(node.lineno)
                if pragma is not None and pragma.uses:
                    return True
        return False

    def _local_function(self, name: str, env: dict) -> _Function | None:
        # Nested functions first (any enclosing def), then module level: enough for the code we scan.
        matches = [q for q in self.functions if q == name or q.endswith(f".<locals>.{name}")]
        return self.functions[matches[0]] if len(matches) == 1 else self.functions.get(name)

    def _bind_call(self, fn: _Function, args: list, kwargs: dict, gates) -> None:
        params = self._params(fn.node)
        bound = dict(zip(params, args))
        bound.update({k: v for k, v in kwargs.items() if k in params})
        for name, value in bound.items():
            if value is not None and fn.params.get(name) != value:
                fn.params[name], self.changed = value, True
        if not self.recording and gates not in fn.call_gates:
            fn.call_gates.append(gates)
            self.changed = True

    # -- records

    def _where(self, node: ast.AST) -> str:
        return f"{self.filename}:{node.lineno}"

    def _record(self, use: Use) -> None:
        if self.recording:
            self.uses.add(use)


def scan_source(source: str, filename: str = "<source>") -> list[Use]:
    """Every TensorRT name `source` reaches, with where and under which gates."""
    module = _Module(source, filename)
    if not module.uses_tensorrt():
        return []
    return sorted(module.run(), key=lambda u: (u.where, u.label))


def tensorrt_sources(root: Path) -> Iterator[Path]:
    """The .py files under `root` that use TensorRT: `import tensorrt`, or an object named `trt`."""
    for path in sorted(Path(root).rglob("*.py")):
        text = path.read_text()
        if re.search(r"^\s*import tensorrt\b|\btrt\.", text, re.MULTILINE):
            yield path


def scan_tree(root: Path, relative_to: Path | None = None) -> list[Use]:
    uses = []
    for path in tensorrt_sources(root):
        name = str(path.relative_to(relative_to)) if relative_to else str(path)
        uses += scan_source(path.read_text(), name)
    return uses
