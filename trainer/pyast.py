"""`ast.parse` behind one lock for the whole process.

CPython 3.11 keeps the depth counter of its AST constructor in state shared by the threads of
an interpreter, and a conversion that fails or runs beside another can leave it off: every
later `ast.parse` in the process may then raise `SystemError: AST constructor recursion depth
mismatch` (python/cpython#106905; seen here once, in a test run, with a proposal thread and the
driver parsing at once). The driver parses in its proposal thread and its main thread, so
every parse of ours goes through here, one at a time.

The last few trees are remembered: one validation reads the candidate in several checks
(its hash, the entry point, the referee's guard) and the incumbent for every candidate of it.
The trees are shared, so callers only read them.
"""

from __future__ import annotations

import ast
import functools
import threading

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def parse(source: str) -> ast.Module:
    with _LOCK:
        return ast.parse(source)
