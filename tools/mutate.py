"""A small mutation tester for sbnkit: one-line mutants, each run against the tests that cover it.

For every chosen module the script parses the source with :mod:`ast` and makes one-line mutants:

* arithmetic ``+ <-> -``, ``* <-> /``, ``// -> /``, ``** -> *`` (also in ``+=`` and friends);
* comparisons ``< <-> <=``, ``> <-> >=``, ``== <-> !=``, ``is <-> is not``, ``in <-> not in``;
* ``and <-> or``; dropping a unary ``-`` or ``not``;
* constants ``0 <-> 1``, ``True <-> False``, other integers ``n -> n + 1``, other floats
  ``x -> x / 2`` (``2.0 -> 1.0``);
* ``return <value>`` -> ``return None``.

Docstrings, type annotations, ``raise`` statements (their message strings), f-strings, logging and
warning calls and the display-only ``__repr__``/``extra_repr`` are left alone.

Mutants never touch the working tree: the repository's ``sbnkit`` and ``tests`` are copied once to
a temporary folder, each mutant is written over the module file in that copy (``PYTHONPATH`` points
at it) and the file is restored afterwards. Each mutant runs the module's mapped tests with
``pytest -x -q -p no:cacheprovider`` in ONE process with one thread, under a timeout of
``TIMEOUT_FACTOR`` times the unmutated run's time. A failing test run kills the mutant; a passing
one lets it survive. The per-module table and the list of survivors go to stdout and ``--report``.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Module -> the test files (or pytest node ids) that cover it. Only these run for its mutants.
MODULE_TESTS: dict[str, list[str]] = {
    "sbnkit/noise.py": ["tests/test_noise.py"],
    "sbnkit/units.py": ["tests/test_units.py"],
    "sbnkit/weights.py": ["tests/test_weights.py"],
    "sbnkit/estimators/score.py": ["tests/test_score.py", "tests/test_path_estimators.py"],
    "sbnkit/estimators/adf.py": ["tests/test_adf.py", "tests/test_path_estimators.py"],
    "sbnkit/estimators/local.py": ["tests/test_estimator_interface.py"],
    "sbnkit/inference.py": ["tests/test_inference.py", "tests/test_metrics.py"],
    "sbnkit/data/idx.py": ["tests/test_idx.py", "tests/test_data.py"],
}

TIMEOUT_FACTOR = 3.0
TIMEOUT_SLACK = 10.0  # seconds added to every timeout: the machine is shared
SKIP_FUNCTIONS = {"__repr__", "extra_repr"}
LOGGING_NAMES = {"logging", "logger", "log", "warnings", "print"}

BINOP_SWAPS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: ("+", "-"),
    ast.Sub: ("-", "+"),
    ast.Mult: ("*", "/"),
    ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"),
    ast.Pow: ("**", "*"),
}
CMP_SWAPS: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Lt: ("<", "<="),
    ast.LtE: ("<=", "<"),
    ast.Gt: (">", ">="),
    ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="),
    ast.Is: ("is", "is not"),
    ast.IsNot: ("is not", "is"),
    ast.In: ("in", "not in"),
    ast.NotIn: ("not in", "in"),
}


@dataclass(frozen=True)
class Mutant:
    """One mutant: on source line ``line`` (1-based), bytes ``[start, end)`` become ``new``."""

    module: str
    line: int
    start: int
    end: int
    old: str
    new: str
    kind: str

    def apply(self, lines: list[bytes]) -> str:
        """The module source with this mutant applied (``lines`` keep their line endings)."""
        out = list(lines)
        text = out[self.line - 1]
        out[self.line - 1] = text[: self.start] + self.new.encode() + text[self.end :]
        return b"".join(out).decode()

    def describe(self) -> str:
        return f"{self.module}:{self.line}: {self.kind}: `{self.old}` -> `{self.new}`"


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """Ids of every node that must not be mutated (see the module docstring)."""
    skip: set[int] = set()

    def drop(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        value = first.value if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            drop(first)  # docstring
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            drop(node.returns)
            for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                drop(a.annotation)
            for a in (node.args.vararg, node.args.kwarg):
                drop(a.annotation if a else None)
            if node.name in SKIP_FUNCTIONS:
                drop(node)
        elif isinstance(node, ast.AnnAssign):
            drop(node.annotation)
        elif isinstance(node, (ast.Raise, ast.JoinedStr, ast.ImportFrom, ast.Import)):
            drop(node)
        elif isinstance(node, ast.Call):
            func = node.func
            root = func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in LOGGING_NAMES:
                drop(node)
    return skip


def _find_token(lines: list[bytes], after: ast.AST, before: ast.AST, token: str) -> tuple[int, int]:
    """``(line, byte column)`` of ``token`` between the end of ``after`` and ``before``'s start,
    when both lie on one line; ``(0, 0)`` otherwise."""
    if after.end_lineno != before.lineno:
        return 0, 0
    text = lines[before.lineno - 1][after.end_col_offset : before.col_offset]
    stripped = text.replace(b"(", b" ").replace(b")", b" ").split()
    if stripped != token.encode().split():
        return 0, 0
    return before.lineno, after.end_col_offset + text.index(token.split()[0].encode())


def _token_mutant(
    module: str, lines: list[bytes], after: ast.AST, before: ast.AST, old: str, new: str, kind: str
) -> Mutant | None:
    line, col = _find_token(lines, after, before, old)
    if not line:
        return None
    text = lines[line - 1]
    end = text.index(old.split()[-1].encode(), col) + len(old.split()[-1])
    return Mutant(module, line, col, end, old, new, kind)


def _constant_replacement(value: object) -> str | None:
    if isinstance(value, bool):
        return repr(not value)
    if isinstance(value, int):
        return "1" if value == 0 else "0" if value == 1 else repr(value + 1)
    if isinstance(value, float):
        return "1.0" if value == 0 else "0.0" if value == 1 else repr(value / 2)
    return None


def generate(module: str, source: str) -> list[Mutant]:
    """Every mutant of ``source`` (the file ``module``), in source order."""
    tree = ast.parse(source)
    lines = source.encode().splitlines(keepends=True)
    skip = _skipped_nodes(tree)
    found: list[Mutant | None] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
            old, new = BINOP_SWAPS[type(node.op)]
            found.append(_token_mutant(module, lines, node.left, node.right, old, new, "operator"))
        elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS:
            old, new = BINOP_SWAPS[type(node.op)]
            found.append(
                _token_mutant(module, lines, node.target, node.value, old + "=", new + "=", "aug")
            )
        elif isinstance(node, ast.Compare):
            lefts = [node.left, *node.comparators[:-1]]
            for op, left, right in zip(node.ops, lefts, node.comparators, strict=True):
                if type(op) in CMP_SWAPS:
                    old, new = CMP_SWAPS[type(op)]
                    found.append(_token_mutant(module, lines, left, right, old, new, "compare"))
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            found.append(
                _token_mutant(module, lines, node.values[0], node.values[1], old, new, "boolean")
            )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            if node.lineno == node.operand.lineno:
                text = lines[node.lineno - 1][node.col_offset : node.operand.col_offset]
                found.append(
                    Mutant(
                        module,
                        node.lineno,
                        node.col_offset,
                        node.operand.col_offset,
                        text.decode(),
                        "",
                        "unary",
                    )
                )
        elif isinstance(node, ast.Constant) and node.lineno == node.end_lineno:
            new = _constant_replacement(node.value)
            if new is not None:
                text = lines[node.lineno - 1][node.col_offset : node.end_col_offset].decode()
                found.append(
                    Mutant(
                        module,
                        node.lineno,
                        node.col_offset,
                        node.end_col_offset,
                        text,
                        new,
                        "constant",
                    )
                )
        elif isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            is_none = isinstance(value, ast.Constant) and value.value is None
            if not is_none and value.lineno == value.end_lineno == node.lineno:
                text = lines[node.lineno - 1][value.col_offset : value.end_col_offset].decode()
                found.append(
                    Mutant(
                        module,
                        node.lineno,
                        value.col_offset,
                        value.end_col_offset,
                        text,
                        "None",
                        "return",
                    )
                )
    mutants = sorted({m for m in found if m is not None}, key=lambda m: (m.line, m.start, m.new))
    return [m for m in mutants if _parses(m.apply(lines))]


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def select(mutants: list[Mutant], limit: int | None, seed: int) -> list[Mutant]:
    """At most ``limit`` of ``mutants``, sampled with ``seed`` and kept in source order."""
    if limit is None or len(mutants) <= limit:
        return mutants
    chosen = random.Random(seed).sample(range(len(mutants)), limit)
    return [mutants[i] for i in sorted(chosen)]


@dataclass
class ModuleResult:
    """Outcome counts of one module's mutants, and the survivors."""

    module: str
    total: int = 0
    killed: int = 0
    timeout: int = 0
    survivors: list[Mutant] | None = None

    @property
    def score(self) -> float:
        """Detected (killed or timed out) / run."""
        return (self.killed + self.timeout) / self.total if self.total else float("nan")


class Sandbox:
    """A scratch copy of ``sbnkit`` and ``tests`` where mutants are written and tests run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
        for name in ("sbnkit", "tests"):
            shutil.copytree(REPO / name, root / name, ignore=ignore)
        shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
        self.env = dict(
            os.environ,
            PYTHONPATH=str(root),
            PYTHONDONTWRITEBYTECODE="1",  # a stale .pyc of a same-size mutant must never load
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            NUMBA_NUM_THREADS="1",
        )

    def check_imports_copy(self) -> None:
        """Fail loudly unless ``import sbnkit`` in the sandbox loads the sandbox's copy."""
        code = "import sbnkit, sys; sys.stdout.write(sbnkit.__file__)"
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if not Path(out).resolve().is_relative_to(self.root.resolve()):
            raise SystemExit(f"the sandbox imports {out}, not its own copy; aborting")

    def run_tests(self, tests: list[str], timeout: float | None) -> tuple[str, float]:
        """``("pass" | "fail" | "timeout", seconds)`` of one pytest run of ``tests``."""
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        start = time.monotonic()
        try:
            rc = subprocess.run(
                cmd,
                cwd=self.root,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start
        return ("pass" if rc == 0 else "fail"), time.monotonic() - start


def run_module(
    box: Sandbox, module: str, mutants: list[Mutant], verbose: bool = True
) -> ModuleResult:
    """Run ``mutants`` of ``module`` in ``box``; the file is restored afterwards."""
    tests = MODULE_TESTS[module]
    result = ModuleResult(module, survivors=[])
    status, base = box.run_tests(tests, None)
    if status != "pass":
        raise SystemExit(f"the tests of {module} fail without any mutant: {' '.join(tests)}")
    timeout = TIMEOUT_FACTOR * base + TIMEOUT_SLACK
    path = box.root / module
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)
    if verbose:
        print(f"{module}: {len(mutants)} mutants, baseline {base:.1f} s", flush=True)
    try:
        for k, m in enumerate(mutants, 1):
            path.write_text(m.apply(lines))
            status, took = box.run_tests(tests, timeout)
            result.total += 1
            if status == "fail":
                result.killed += 1
            elif status == "timeout":
                result.timeout += 1
            else:
                result.survivors.append(m)
            if verbose:
                print(
                    f"  [{k}/{len(mutants)}] {status:7s} {took:5.1f} s  {m.describe()}", flush=True
                )
    finally:
        path.write_bytes(original)
    return result


def report(results: list[ModuleResult], command: str) -> str:
    """The markdown table of scores and the list of surviving mutants."""
    rows = [
        "| module | mutants | killed | timeout | survived | score |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        survived = len(r.survivors or [])
        rows.append(
            f"| {r.module} | {r.total} | {r.killed} | {r.timeout} | {survived} | {r.score:.0%} |"
        )
    total = sum(r.total for r in results)
    detected = sum(r.killed + r.timeout for r in results)
    if total:
        rows.append(f"| **all** | {total} | | | {total - detected} | {detected / total:.0%} |")
    out = [f"Command: `{command}`", "", *rows, "", "Surviving mutants:", ""]
    survivors = [m for r in results for m in r.survivors or []]
    out += [f"- {m.describe()}" for m in survivors] or ["- none"]
    return "\n".join(out) + "\n"


def iter_modules(names: list[str]) -> Iterator[str]:
    for name in names:
        if name not in MODULE_TESTS:
            known = ", ".join(MODULE_TESTS)
            raise SystemExit(f"no tests are mapped to {name}; known modules: {known}")
        yield name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", default=list(MODULE_TESTS), metavar="PATH")
    parser.add_argument("--max-mutants", type=int, default=None, metavar="N", help="per module")
    parser.add_argument("--seed", type=int, default=0, help="of the mutant sample")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    modules = list(iter_modules(args.modules))
    chosen = {
        m: select(generate(m, (REPO / m).read_text()), args.max_mutants, args.seed) for m in modules
    }
    if args.list:
        for m, mutants in chosen.items():
            print(f"{m}: {len(mutants)} mutants")
            for mutant in mutants:
                print(f"  {mutant.describe()}")
        return 0
    # SIGTERM unwinds like Ctrl-C, so the scratch copy is removed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    command = "python tools/mutate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sbnkit-mutate-") as tmp:
        box = Sandbox(Path(tmp))
        box.check_imports_copy()
        results = [run_module(box, m, chosen[m]) for m in modules]
    text = report(results, command.strip())
    text += f"\nWall time: {time.monotonic() - start:.0f} s\n"
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
