"""A template's unit tests, evaluated by datagen itself: only the candidate's calls run in the sandbox.

The rule (why a candidate cannot fake a pass): the tests never run in the candidate's process.
`Suite(tests)` parses them with `ast` here; `Suite.run(answers)` evaluates every statement with
a small interpreter over plain data in datagen's process. Each call to a name the tests do not
define (the candidate's functions: `is_palindrome(...)`), and each other unknown name (a module
global of the candidate), is asked of the sandbox with plain-data arguments; what comes back is
decoded into exact builtin values (datagen.steps.sandbox.values), and every comparison, builtin call
(`abs`, `sorted`, `len`, ...) and the assert itself is computed here. So objects with a forged
`==`, int/str subclasses, printed tokens, exit codes, atexit hooks, patched builtins, sys.exit
or traceback, trace functions and re-executing the file change nothing: the expected values and
the comparisons are never in the sandbox. A call the sandbox did not answer (a crash, exit,
timeout) is a failed test, never a passed one.

Test statements accepted (anything else is a `TestsError` naming the line):
- `assert EXPR` or `assert EXPR, message`;
- `NAME = EXPR` (a value for later lines) and a bare `EXPR` (a call that must not raise);
- `import math` (math is available without it too) and `pass`.
An assert's message is never evaluated.
EXPR: literals and displays, names, arithmetic, comparisons (chains, `is`, `in`), `and` / `or`
/ `not`, `x if c else y`, subscripts and slices, comprehensions over names or tuples of names,
calls of these builtins: abs all any bool chr dict divmod enumerate float frozenset int
isinstance len list max min ord range repr reversed round set sorted str sum tuple type zip;
`math.` isclose isnan isinf isfinite sqrt floor ceil fabs gcd log log2 log10 pi e tau inf nan;
and non-mutating methods of builtin values (str: lower, strip, split, startswith, ...; dict:
keys, values, items, get; ...), plus calls of the candidate's functions with plain-data
arguments (None, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict).
A call's arguments may themselves use candidate calls (`decode(encode(x))`): each nesting level
is one more sandbox run. Arguments are copies: a test cannot see a candidate mutate them.
"""

from __future__ import annotations

import ast
import builtins
import json
import math
from dataclasses import dataclass, field
from typing import Any

from datagen.steps.sandbox import CallOutcome, values
from datagen.text.python_syntax import parse_python

MAX_CALLS = 10_000  # distinct candidate calls one suite may ask for
MAX_ITEMS = 1_000_000  # largest range / repetition the tests may build
MAX_POWER_BITS = 100_000
MAX_STEPS = 1_000_000  # expression evaluations and loop iterations per run of a suite


class TestsError(ValueError):
    """The tests use something this evaluator does not support (the template's fault)."""


class _Pending:
    def __repr__(self) -> str:
        return "<pending>"


PENDING = _Pending()


class _Fail(Exception):
    """A test failed: the message is the detail."""


@dataclass(frozen=True)
class Call:
    name: str  # ".x" for the module global x
    args: tuple
    kwargs: dict

    @property
    def key(self) -> str:
        return json.dumps([self.name, values.encode(list(self.args)), values.encode(self.kwargs)], sort_keys=True)


@dataclass
class Outcome:
    status: str  # "passed" | "failed" | "pending"
    detail: str = ""
    pending: dict[str, Call] = field(default_factory=dict)  # key -> call, for "pending"


_FUNCTIONS = {
    name: getattr(builtins, name)
    for name in "abs all any bool chr divmod float int isinstance len list max min ord range repr round sorted str sum tuple type".split()
}
_FUNCTIONS |= {"enumerate": lambda *a, **k: list(enumerate(*a, **k)), "reversed": lambda x: list(reversed(x)), "zip": lambda *a: list(zip(*a))}


def _hashed(kind):
    """set / frozenset / dict that refuse more than values.MAX_HASHED_ITEMS items (see there)."""

    def build(*args, **kwargs):
        if args and hasattr(args[0], "__len__") and len(args[0]) > values.MAX_HASHED_ITEMS:
            raise ValueError(f"a {kind.__name__} of more than {values.MAX_HASHED_ITEMS} items")
        return kind(*args, **kwargs)

    return build


_FUNCTIONS |= {kind.__name__: _hashed(kind) for kind in (set, frozenset, dict)}
# Names that stand for a builtin type where the tests use them as values (isinstance, type() is).
_TYPE_NAMES = {kind.__name__: kind for kind in (bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict, type)}
_MATH = {name: getattr(math, name) for name in "isclose isnan isinf isfinite sqrt floor ceil fabs gcd log log2 log10 pi e tau inf nan".split()}
_STR = set("lower upper strip lstrip rstrip split rsplit splitlines startswith endswith count find rfind index rindex isdigit isalpha isalnum isspace islower isupper istitle isdecimal isnumeric casefold title capitalize swapcase".split())
_METHODS = {
    str: _STR,
    bytes: _STR - {"casefold", "isdecimal", "isnumeric"},
    list: {"count", "index", "copy"},
    tuple: {"count", "index"},
    dict: {"keys", "values", "items", "get", "copy"},
    set: {"issubset", "issuperset", "isdisjoint", "union", "intersection", "difference", "symmetric_difference", "copy"},
    frozenset: {"issubset", "issuperset", "isdisjoint", "union", "intersection", "difference", "symmetric_difference", "copy"},
    int: {"bit_length"},
    float: {"is_integer"},
}
_METHOD_NAMES = set().union(*_METHODS.values())
_EVAL_ERRORS = (TypeError, ValueError, ArithmeticError, LookupError, RecursionError, AttributeError)

_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple, ast.Set, ast.Dict,
    ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Call, ast.keyword,
    ast.Attribute, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip


class Suite:
    """Parsed tests. Raises TestsError for tests this evaluator cannot run (see the module doc)."""

    def __init__(self, source: str):
        try:
            tree = parse_python(source)
        except (SyntaxError, ValueError) as err:
            raise TestsError(f"the tests are not valid Python: {err}") from None
        self.source = source
        self.statements = tree.body
        for statement in tree.body:
            self._check_statement(statement)
        if not any(isinstance(s, ast.Assert) for s in tree.body):
            raise TestsError("the tests contain no assert statement")

    def _check_statement(self, node: ast.stmt) -> None:
        where = f"line {node.lineno}"
        if isinstance(node, ast.Assert):
            parts = [node.test]  # the message is never evaluated
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            parts = [node.value]
        elif isinstance(node, ast.Expr):
            parts = [node.value]
        elif isinstance(node, ast.Import) and [(a.name, a.asname) for a in node.names] == [("math", None)]:
            return
        elif isinstance(node, ast.Pass):
            return
        else:
            raise TestsError(f"{where}: {type(node).__name__} statements are not supported in tests (assert, NAME = EXPR, EXPR, import math)")
        for part in parts:
            for sub in ast.walk(part):
                if not isinstance(sub, _ALLOWED_NODES):
                    raise TestsError(f"{where}: {type(sub).__name__} is not supported in tests")
                if isinstance(sub, ast.Call):
                    if not isinstance(sub.func, (ast.Name, ast.Attribute)) or any(isinstance(a, ast.Starred) for a in sub.args) or any(k.arg is None for k in sub.keywords):
                        raise TestsError(f"{where}: only calls of a name or method, without * or ** arguments, are supported")
                    if isinstance(sub.func, ast.Attribute) and sub.func.attr not in _METHOD_NAMES and not _is_math(sub.func):
                        raise TestsError(f"{where}: the method {sub.func.attr!r} is not supported in tests")
                elif isinstance(sub, ast.Attribute) and not _is_math(sub) and sub.attr not in _METHOD_NAMES:
                    raise TestsError(f"{where}: the attribute {sub.attr!r} is not supported in tests")
                elif isinstance(sub, ast.comprehension):
                    targets = sub.target.elts if isinstance(sub.target, ast.Tuple) else [sub.target]
                    if sub.is_async or not all(isinstance(t, ast.Name) for t in targets):
                        raise TestsError(f"{where}: comprehension targets must be names")

    def run(self, answers: dict[str, CallOutcome]) -> Outcome:
        """Evaluate every statement with the calls answered so far. "failed" at the first test
        that fails on known values; else "pending" with the calls still needed; else "passed"."""
        state = _Evaluator(self.source, answers)
        for statement in self.statements:
            try:
                state.statement(statement)
            except _Fail as failure:
                return Outcome("failed", f"line {statement.lineno}: {failure}")
            if len(state.wanted) > MAX_CALLS:
                raise TestsError(f"the tests ask for more than {MAX_CALLS} calls")
        if state.wanted or state.pending_statements:
            return Outcome("pending", pending=state.wanted)
        return Outcome("passed")


def _is_math(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _MATH


class _Evaluator:
    def __init__(self, source: str, answers: dict[str, CallOutcome]):
        self.source = source
        self.answers = answers
        self.wanted: dict[str, Call] = {}
        self.pending_statements = 0
        self.env: dict[str, Any] = {"math": _MATH}  # with or without `import math`
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TestsError(f"the tests take more than {MAX_STEPS} evaluation steps")

    def text(self, node: ast.AST, limit: int = 120) -> str:
        text = " ".join((ast.get_source_segment(self.source, node) or ast.unparse(node)).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            self.env["math"] = _MATH
        elif isinstance(node, ast.Assign):
            self.env[node.targets[0].id] = self.value(node.value)
        elif isinstance(node, ast.Expr):
            if self.value(node.value) is PENDING:
                self.pending_statements += 1
        elif isinstance(node, ast.Assert):
            result = self.value(node.test)
            if result is PENDING:
                self.pending_statements += 1
            elif not _truth(result, self, node.test):
                raise _Fail(f"assert {self.text(node.test)}{self.got(node.test)}")

    def got(self, test: ast.expr) -> str:
        """What the left side was, for a failed comparison: ' (got True)'."""
        if isinstance(test, ast.Compare):
            left = self.value(test.left)
            return f" (got {_short_repr(left)})"
        return ""

    def value(self, node: ast.expr) -> Any:
        try:
            return self._value(node)
        except (_Fail, TestsError):
            raise
        except _EVAL_ERRORS as err:
            raise _Fail(f"{self.text(node)}: {type(err).__name__}: {err}") from None

    def _value(self, node: ast.expr) -> Any:
        self.step()
        kind = type(node)
        if kind is ast.Constant:
            return node.value
        if kind is ast.Name:
            if node.id in self.env:
                return self.env[node.id]
            if node.id in _TYPE_NAMES or node.id in _FUNCTIONS:
                return _TYPE_NAMES.get(node.id) or _FUNCTIONS[node.id]
            return self.candidate(node, "." + node.id, (), {})
        if kind in (ast.List, ast.Tuple, ast.Set):
            items = [self.value(e) for e in node.elts]
            if PENDING in _identities(items):
                return PENDING
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[kind](items)
        if kind is ast.Dict:
            keys, vals = [self.value(k) for k in node.keys], [self.value(v) for v in node.values]
            return PENDING if PENDING in _identities(keys + vals) else dict(zip(keys, vals))
        if kind is ast.UnaryOp:
            operand = self.value(node.operand)
            if operand is PENDING:
                return PENDING
            op = type(node.op)
            if op is ast.Not:
                return not _truth(operand, self, node.operand)
            return {ast.USub: lambda v: -v, ast.UAdd: lambda v: +v, ast.Invert: lambda v: ~v}[op](operand)
        if kind is ast.BinOp:
            left, right = self.value(node.left), self.value(node.right)
            if left is PENDING or right is PENDING:
                return PENDING
            return _binop(node.op, left, right)
        if kind is ast.BoolOp:
            result = None
            for operand in node.values:
                result = self.value(operand)
                if result is PENDING:
                    for rest in node.values:  # collect the calls the rest needs too
                        self.value(rest)
                    return PENDING
                truth = _truth(result, self, operand)
                if (isinstance(node.op, ast.And) and not truth) or (isinstance(node.op, ast.Or) and truth):
                    return result
            return result
        if kind is ast.Compare:
            operands = [self.value(node.left)] + [self.value(c) for c in node.comparators]
            if PENDING in _identities(operands):
                return PENDING
            for operand in operands:
                _bounded(operand)
            for op, left, right in zip(node.ops, operands, operands[1:]):
                if not _truth(_compare(op, left, right), self, node):
                    return False
            return True
        if kind is ast.IfExp:
            test = self.value(node.test)
            if test is PENDING:
                self.value(node.body), self.value(node.orelse)
                return PENDING
            return self.value(node.body if _truth(test, self, node.test) else node.orelse)
        if kind is ast.Subscript:
            container = self.value(node.value)
            index = self.value(node.slice)
            if container is PENDING or index is PENDING:
                return PENDING
            _require_plain(container, self, node.value)
            return container[index]
        if kind is ast.Slice:
            parts = [self.value(p) if p is not None else None for p in (node.lower, node.upper, node.step)]
            return PENDING if PENDING in _identities(parts) else slice(*parts)
        if kind in (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp):
            return self.comprehension(node)
        if kind is ast.Attribute:  # math.pi; a method outside a call is refused at parse time
            owner = self.value(node.value)
            if owner is _MATH:
                return _MATH[node.attr]
            raise _Fail(f"{self.text(node)}: only math constants may be read as attributes")
        if kind is ast.Call:
            return self.call(node)
        raise TestsError(f"{type(node).__name__} is not supported in tests")

    def call(self, node: ast.Call) -> Any:
        args = [self.value(a) for a in node.args]
        kwargs = {k.arg: self.value(k.value) for k in node.keywords}
        known = PENDING not in _identities(args + list(kwargs.values()))
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = self.value(func.value)
            if owner is PENDING or not known:
                return PENDING
            if owner is _MATH:
                function = _MATH[func.attr]
            elif func.attr in _METHODS.get(type(owner), ()):
                function = getattr(owner, func.attr)
            else:
                raise _Fail(f"{self.text(node)}: a {type(owner).__name__} has no method {func.attr!r} the tests may call")
            return _checked_call(function, args, kwargs)
        name = func.id
        if name in self.env:
            target = self.env[name]
            if target is PENDING:
                return PENDING
            if callable(target) and (target in _FUNCTIONS.values() or target in _MATH.values()):
                return _checked_call(target, args, kwargs) if known else PENDING
            raise _Fail(f"{self.text(node)}: {name} is a value of the tests, not a function")
        if name in _TYPE_NAMES and name not in _FUNCTIONS:
            raise TestsError(f"line {node.lineno}: calling {name}() is not supported in tests")
        if name in _FUNCTIONS:
            if not known:
                return PENDING
            if name == "range":
                result = range(*args, **kwargs)
                if len(result) > MAX_ITEMS:
                    raise _Fail(f"{self.text(node)}: a range of more than {MAX_ITEMS} items")
                return result
            return _checked_call(_FUNCTIONS[name], args, kwargs)
        if not known:
            return PENDING
        return self.candidate(node, name, tuple(args), kwargs)

    def candidate(self, node: ast.expr, name: str, args: tuple, kwargs: dict) -> Any:
        try:
            call = Call(name, args, kwargs)
            key = call.key
        except (TypeError, ValueError) as err:
            raise _Fail(f"{self.text(node)}: an argument is not plain data ({err})") from None
        outcome = self.answers.get(key)
        if outcome is None:
            self.wanted[key] = call
            return PENDING
        if outcome.error is not None:
            verb = "reading" if name.startswith(".") else "calling"
            raise _Fail(f"{verb} {self.text(node)}: {outcome.error}")
        return outcome.value

    def comprehension(self, node) -> Any:
        results: list = []
        pending = False
        saved = dict(self.env)

        def loop(generators: list) -> None:
            nonlocal pending
            if not generators:
                if isinstance(node, ast.DictComp):
                    results.append((self.value(node.key), self.value(node.value)))
                else:
                    results.append(self.value(node.elt))
                return
            first, rest = generators[0], generators[1:]
            iterable = self.value(first.iter)
            if iterable is PENDING:
                pending = True
                return
            items = list(iterable) if isinstance(iterable, (list, tuple, set, frozenset, dict, str, bytes, range, type({}.items()), type({}.keys()), type({}.values()))) else None
            if items is None:
                raise _Fail(f"{self.text(first.iter)}: a {type(iterable).__name__} cannot be iterated in tests")
            for item in items:
                self.step()
                targets = first.target.elts if isinstance(first.target, ast.Tuple) else [first.target]
                if len(targets) == 1 and not isinstance(first.target, ast.Tuple):
                    self.env[targets[0].id] = item
                else:
                    unpacked = list(item)
                    if len(unpacked) != len(targets):
                        raise _Fail(f"{self.text(first.target)}: cannot unpack {len(unpacked)} values into {len(targets)}")
                    for target, value in zip(targets, unpacked):
                        self.env[target.id] = value
                conditions = [self.value(c) for c in first.ifs]
                if PENDING in _identities(conditions):
                    pending = True
                    loop(rest)  # still collect the calls the body needs
                    continue
                if all(_truth(c, self, node) for c in conditions):
                    loop(rest)

        try:
            loop(node.generators)
        finally:
            self.env = saved
        flat = [v for pair in results for v in (pair if isinstance(node, ast.DictComp) else (pair,))]
        if pending or PENDING in _identities(flat):
            return PENDING
        if isinstance(node, ast.SetComp):
            return _FUNCTIONS["set"](results)
        if isinstance(node, ast.DictComp):
            return _FUNCTIONS["dict"](results)
        return results  # a generator expression is consumed as a list (by all, any, sum, ...)


def _identities(items: list) -> list:
    """`PENDING in _identities(x)` tests identity only: `in` on the values would call their ==."""
    return [PENDING if item is PENDING else None for item in items]


def _truth(value: Any, state: _Evaluator, node: ast.AST) -> bool:
    _require_plain(value, state, node)
    return bool(value)


_PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict, range, slice, type({}.items()), type({}.keys()), type({}.values()))


def _require_plain(value: Any, state: _Evaluator, node: ast.AST) -> None:
    if type(value) not in _PLAIN and not isinstance(value, type) and not callable(value):
        raise _Fail(f"{state.text(node)}: a {type(value).__name__} is not plain data")


def _binop(op: ast.operator, left: Any, right: Any) -> Any:
    kind = type(op)
    if kind is ast.Mult:
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and type(times) is int and len(seq) * times > MAX_ITEMS:
                raise ValueError(f"repetition to more than {MAX_ITEMS} items")
            if isinstance(seq, (list, tuple)) and type(times) is int and times > 1:
                _bounded(seq)
                if any(type(item) in (list, tuple, set, frozenset, dict) for item in seq):
                    raise ValueError("repeating a sequence of containers (it would share them) is not supported in tests")
    if kind is ast.Pow and type(left) is int and type(right) is int and abs(left) > 1 and right * max(abs(left).bit_length(), 1) > MAX_POWER_BITS:
        raise ValueError(f"a power of more than {MAX_POWER_BITS} bits")
    if kind is ast.LShift and type(right) is int and right > MAX_POWER_BITS:
        raise ValueError(f"a shift of more than {MAX_POWER_BITS} bits")
    operations = {
        ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
        ast.Pow: lambda a, b: a ** b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
        ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b, ast.BitXor: lambda a, b: a ^ b,
    }  # fmt: skip
    if kind not in operations:
        raise TypeError(f"the operator {kind.__name__} is not supported in tests")
    if kind is ast.Mod and isinstance(left, (str, bytes)):
        raise TypeError("%-formatting is not supported in tests")
    return operations[kind](left, right)


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    kind = type(op)
    if kind is ast.Eq:
        return left == right
    if kind is ast.NotEq:
        return left != right
    if kind is ast.Lt:
        return left < right
    if kind is ast.LtE:
        return left <= right
    if kind is ast.Gt:
        return left > right
    if kind is ast.GtE:
        return left >= right
    if kind is ast.Is:
        return left is right
    if kind is ast.IsNot:
        return left is not right
    if kind is ast.In:
        return left in right
    return left not in right


def _checked_call(function, args: list, kwargs: dict) -> Any:
    for value in (*args, *kwargs.values()):
        _bounded(value)
    return function(*args, **kwargs)


def _bounded(value: Any) -> None:
    """ValueError when walking `value` visits more than MAX_ITEMS elements. Values the tests
    build can share parts (x = [a, a, a]; y = [x, x, x] ...), so their size can grow
    exponentially with the lines that build them; comparing or printing one would then hang."""
    if type(value) not in (list, tuple, set, frozenset, dict):
        return
    budget = MAX_ITEMS
    stack = [value]
    while stack:
        current = stack.pop()
        kind = type(current)
        if kind in (list, tuple, set, frozenset):
            budget -= len(current)
            stack.extend(item for item in current if type(item) in (list, tuple, set, frozenset, dict))
        elif kind is dict:
            budget -= 2 * len(current)
            stack.extend(item for pair in current.items() for item in pair if type(item) in (list, tuple, set, frozenset, dict))
        if budget < 0:
            raise ValueError(f"a value of more than {MAX_ITEMS} items (counting shared parts each time)")


def _short_repr(value: Any, limit: int = 100) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long for its decimal form
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
