"""Score formulas: a small arithmetic language over numeric columns, compiled to a polars expression.

A formula is parsed with Python's own parser (`ast.parse(mode="eval")`) and then only these nodes
are accepted; anything else (attributes, subscripts, strings, comparisons, lambdas, calls of other
names) is refused, and nothing is ever evaluated by Python:

    number        2, 0.5, 1e-3
    column        judge_grounded, completion_tokens    (a numeric column of the output rows)
    arithmetic    a + b, a - b, a * b, a / b, a ** b, -a, (a)
    functions     min(a, b, ...), max(a, b, ...), abs(a), sqrt(a), log(a), exp(a),
                  clip(a, low, high), coalesce(a, b, ...)   (the first non-null argument)

A row where a column it reads is null gets a null result, unless `coalesce` supplies a value; a
result that is not finite (a division by zero, the log of 0) is null too. Example:
`(2 * grounding_supported + grounding_relevant + grounding_fluent) / 20`.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import polars as pl

from datagen.text.python_syntax import parse_python

MAX_CHARS = 1000
MAX_NODES = 300
FUNCTIONS = {"min": (2, None), "max": (2, None), "abs": (1, 1), "sqrt": (1, 1), "log": (1, 1), "exp": (1, 1), "clip": (3, 3), "coalesce": (2, None)}
NUMERIC = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Float32, pl.Float64, pl.Boolean)


class FormulaError(ValueError):
    """A formula that does not parse, uses something outside the language, or reads a column the
    rows do not have (or that is not numeric). The message says which part."""


@dataclass(frozen=True)
class Formula:
    """A parsed formula: `text` as written, `columns` it reads (sorted), `expr()` its polars
    expression (Float64), `evaluate(frame)` its values for the rows of `frame`."""

    text: str
    columns: tuple[str, ...]
    _tree: ast.expr = field(repr=False, compare=False)

    def expr(self) -> pl.Expr:
        value = _compile(self._tree).cast(pl.Float64)
        return pl.when(value.is_finite()).then(value).otherwise(None)

    def check(self, schema: pl.Schema | dict[str, pl.DataType]) -> None:
        """Raise FormulaError for a column `schema` does not have or that is not numeric."""
        for name in self.columns:
            if name not in schema:
                known = ", ".join(sorted(c for c, t in schema.items() if _numeric(t))) or "none"
                raise FormulaError(f"{_shown(self.text)} reads the column {name!r}, which the rows do not have (numeric columns: {known})")
            if not _numeric(schema[name]):
                raise FormulaError(f"{_shown(self.text)} reads the column {name!r}, which holds {schema[name]}, not numbers")

    def evaluate(self, frame: pl.DataFrame) -> pl.Series:
        """The formula's value per row of `frame` (Float64, null where undefined); FormulaError for
        a missing or non-numeric column."""
        self.check(frame.schema)
        return frame.select(self.expr().alias("value")).to_series()


def _shown(text: str) -> str:
    """The formula as error messages quote it: at most 60 characters."""
    text = text.strip()
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _numeric(dtype: pl.DataType) -> bool:
    return any(dtype == t for t in NUMERIC) or dtype == pl.Null


def parse_formula(text: str) -> Formula:
    """Parse `text` into a Formula. Raises FormulaError (with the reason) for anything outside the
    language above, an empty or over-long text (MAX_CHARS) or one of more than MAX_NODES parts."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("a formula is needed (e.g. 'judge_score' or '2 * judge_grounded + judge_fluent')")
    if len(text) > MAX_CHARS:
        raise FormulaError(f"the formula is {len(text)} characters long, more than {MAX_CHARS}")
    try:
        tree = parse_python(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FormulaError(f"{_shown(text)} is not a formula: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError(f"{_shown(text)} is nested too deeply") from None
    nodes = list(ast.walk(tree.body))
    if len(nodes) > MAX_NODES:
        raise FormulaError(f"{_shown(text)} has {len(nodes)} parts, more than {MAX_NODES}")
    columns: set[str] = set()
    _check(tree.body, text, columns)
    return Formula(text.strip(), tuple(sorted(columns)), tree.body)


_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
_SYMBOL = {ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}


def _check(node: ast.expr, text: str, columns: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)) or not math.isfinite(node.value):
            raise FormulaError(f"{_shown(text)}: {ast.unparse(node)} is not a finite number")
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise FormulaError(f"{_shown(text)}: {node.id} is a function; call it as {node.id}(...)")
        columns.add(node.id)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BINARY):
            raise FormulaError(f"{_shown(text)}: the operator {_SYMBOL.get(type(node.op), type(node.op).__name__)} is not supported (use + - * / **)")
        _check(node.left, text, columns)
        _check(node.right, text, columns)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check(node.operand, text, columns)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise FormulaError(f"{_shown(text)}: {ast.unparse(node.func)}(...) is not a known function ({', '.join(FUNCTIONS)})")
        if node.keywords:
            raise FormulaError(f"{_shown(text)}: {name}() takes no keyword arguments")
        low, high = FUNCTIONS[name]
        if len(node.args) < low or (high is not None and len(node.args) > high):
            wanted = f"{low}" if low == high else f"at least {low}"
            raise FormulaError(f"{_shown(text)}: {name}() takes {wanted} arguments, not {len(node.args)}")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise FormulaError(f"{_shown(text)}: {name}() takes plain arguments")
            _check(arg, text, columns)
    else:
        raise FormulaError(f"{_shown(text)}: {ast.unparse(node)!r} is not allowed in a formula (numbers, numeric columns, + - * / **, {', '.join(FUNCTIONS)})")


def _compile(node: ast.expr) -> pl.Expr:
    if isinstance(node, ast.Constant):
        return pl.lit(float(node.value), dtype=pl.Float64)
    if isinstance(node, ast.Name):
        return pl.col(node.id).cast(pl.Float64)
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _compile(node.left), _compile(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        return left.pow(right)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    args = [_compile(a) for a in node.args]
    name = node.func.id
    if name in ("min", "max"):
        # A null argument makes the result null (like arithmetic), unlike polars' horizontal min/max.
        value = pl.min_horizontal(args) if name == "min" else pl.max_horizontal(args)
        return pl.when(pl.any_horizontal([a.is_null() for a in args])).then(None).otherwise(value)
    if name == "abs":
        return args[0].abs()
    if name == "sqrt":
        return pl.when(args[0] >= 0).then(args[0].sqrt()).otherwise(None)
    if name == "log":
        return pl.when(args[0] > 0).then(args[0].log()).otherwise(None)
    if name == "exp":
        return args[0].exp()
    if name == "clip":
        value, low, high = args
        return pl.when(value < low).then(low).when(value > high).then(high).otherwise(value)
    return pl.coalesce(args)
