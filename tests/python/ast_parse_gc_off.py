"""`ast.parse` with garbage collection held off, for the fuzz run on CPython 3.11 before 3.11.8.

Those releases keep the AST constructor's recursion depth in state the whole interpreter shares
(CPython gh-106905, fixed in 3.11.8). The constructor runs no Python code itself, but an
allocation inside it can start a garbage collection, whose finalizers are Python code: if one of
them (or another thread, which may take the GIL there) calls `ast.parse`, the shared depth is
reset and the outer parse raises `SystemError: AST constructor recursion depth mismatch` for a
tree it built correctly. Hypothesis parses source to describe lambdas, from both of
schemathesis's worker threads, so a CI run (Python 3.11.7) failed on it once, as a schemathesis
"Runtime Error", with every request answered as documented.

With collection off for the length of the parse, no Python code runs inside the constructor and
no other thread can get in. Nothing is caught or retried: every error is raised as the
interpreter raises it. `install()` does nothing on interpreters without the race.
"""

import ast
import gc
import sys

# The first 3.11 release whose AST constructor keeps its depth per call.
FIXED_IN = (3, 11, 8)


def has_race(version=None):
    version = tuple(sys.version_info[:3]) if version is None else tuple(version)
    return (3, 11, 0) <= version < FIXED_IN


def _parse_gc_off(parse):
    def parse_gc_off(*args, **kwargs):
        # The GIL is held from here to the return: the constructor releases it only to run
        # Python code, and with collection off it runs none. So no other thread toggles `gc`
        # between the check and the restore.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return parse(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    parse_gc_off.__wrapped__ = parse
    return parse_gc_off


def install():
    """Replace `ast.parse` (which hypothesis and `traceback` call through the module) on the
    releases with the race. Idempotent."""
    if has_race() and not hasattr(ast.parse, "__wrapped__"):
        ast.parse = _parse_gc_off(ast.parse)


def _reproduce():
    """Parses while a collection's finalizer parses too: the number that raised the race's
    SystemError (nonzero on an unpatched 3.11.7, seen 37 of 50)."""

    class ParsesWhenCollected:
        def __init__(self):
            self.cycle = self  # only the cyclic collector frees it

        def __del__(self):
            ast.parse("x = 1\n")
            ParsesWhenCollected()  # the next collection finds another

    threshold = gc.get_threshold()
    gc.set_threshold(50)
    ParsesWhenCollected()
    source = "def f():\n    return [(a, b) for a in range(3) for b in range(4)]\n" * 200
    failures = 0
    try:
        for _ in range(50):
            try:
                ast.parse(source)
            except SystemError as e:
                if "recursion depth mismatch" not in str(e):
                    raise
                failures += 1
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
    return failures


if __name__ == "__main__":
    # A self-check: with install(), the reproduction raises nothing.
    install()
    failures = _reproduce()
    print(f"python {sys.version.split()[0]}: race {'present, patched' if has_race() else 'absent'}; "
          f"{failures} of 50 parses raised the mismatch")
    sys.exit(1 if failures else 0)
