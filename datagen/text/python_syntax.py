"""Parse Python source into a syntax tree safely from several threads at once.

CPython 3.11 keeps the depth counter of its AST object constructor in interpreter-wide state
(Python/Python-ast.c, `state->recursion_depth`). When a garbage collection inside one thread's
`ast.parse` runs Python code (a finalizer, a gc callback) and so lets the GIL go, another thread can
parse meanwhile; the two parses interleave on the one counter and one of them raises
`SystemError: AST constructor recursion depth mismatch` (CPython gh-106905, fixed by PR #113035 in
December 2023, after the 3.11.7 this project runs on). The unit-test verifier, the counterexample
signals and the formula parser run on worker threads, so every parse in datagen goes through
`parse_python`, which holds one process-wide lock while the tree is built.
"""

from __future__ import annotations

import ast
import threading

# Re-entrant: a gc callback or finalizer that parses on the thread already holding the lock nests
# its parse inside the outer one, which leaves the shared counter balanced.
_PARSING = threading.RLock()


def parse_python(source: str, mode: str = "exec") -> ast.AST:
    """`ast.parse(source, mode=mode)` under the process-wide parse lock.

    Returns an `ast.Module` for mode "exec", an `ast.Expression` for "eval". Raises what
    `ast.parse` raises: SyntaxError for invalid source, ValueError for null bytes, RecursionError or
    MemoryError for source nested too deeply.
    """
    with _PARSING:
        return ast.parse(source, mode=mode)
