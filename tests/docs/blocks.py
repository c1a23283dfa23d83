"""Reading the code blocks of the Markdown pages (the README and ``docs/``) and running them.

The conventions (also on the docs' Contributing page):

- a ``python`` block is executed; the blocks of one page run in order in one namespace, in a fresh folder;
- a ``bash`` block is executed line by line: every command must be an ``egnn`` command, which runs in-process
  through ``egnn.experiments.cli.main(argv)`` and must exit with 0;
- a trailing ``# test: ...`` comment shortens a line for the test suite and is visible on the page: on an
  ``egnn`` line its arguments are appended (argparse keeps the last value of a repeated flag, so
  ``--epochs 200  # test: --epochs 1`` trains one epoch); on a Python line ``NAME = VALUE  # test: OTHER`` the
  test assigns ``OTHER`` instead;
- an ``output`` block right after an executed block is compared with what that block printed: ``...`` stands
  for any text, and a number matches when it agrees to the digits shown;
- ``sh`` blocks are shown, not run (``make``, ``pip``, ``torchrun`` on several machines, hour-long benchmarks):
  each ``egnn`` command in them (also after ``torchrun ... -m egnn.experiments.cli``) is checked against the real
  parser (the command exists, every ``--flag`` exists), each ``python benchmarks/X.py`` names a script that exists
  and accepts the flags shown, each ``make T`` a target of the Makefile;
- ``text`` blocks are verbatim text (printed tables of full runs, quoted with the commit that printed them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIP_DIRS = {"_build", "_generated", "own_data", "qm9_recipe", "timing_loops"}
RUN_KINDS = {"python", "bash"}
KNOWN_KINDS = RUN_KINDS | {"output", "sh", "text"}


@dataclass
class Block:
    kind: str
    code: str
    line: int  # 1-based line of the opening fence
    info: str = ""


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


def pages() -> list[Path]:
    """The README and every Markdown page of the docs (result folders and build outputs left out)."""
    found = [ROOT / "README.md"]
    for p in sorted(DOCS.rglob("*.md")):
        if not SKIP_DIRS.intersection(p.relative_to(DOCS).parts):
            found.append(p)
    return found


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def read_blocks(path: Path) -> Page:
    """The fenced code blocks of a page (MyST directives such as ```` ```{toctree} ```` are not code)."""
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^ *{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i][len(m["indent"]):] if lines[i].startswith(m["indent"]) else lines[i])
            i += 1
        i += 1
        if info.startswith("{"):  # a directive
            continue
        kind = info.split()[0] if info else ""
        page.blocks.append(Block(kind, "\n".join(body) + "\n", start + 1, info))
    return page


# --------------------------------------------------------------------------------------- shortening markers

TEST_MARK = re.compile(r"\s+#\s*test:\s*(?P<arg>.*)$")


def shorten_python(code: str) -> str:
    """``NAME = VALUE  # test: OTHER`` -> ``NAME = OTHER``."""
    out = []
    for line in code.splitlines():
        m = TEST_MARK.search(line)
        if m:
            head = line[: m.start()]
            a = re.match(r"^(\s*[A-Za-z_][\w.]*\s*=\s*)", head)
            if not a:
                raise ValueError(f"'# test:' on a Python line that is not an assignment: {line!r}")
            line = a.group(1) + m["arg"]
        out.append(line)
    return "\n".join(out) + "\n"


def shell_commands(code: str) -> list[tuple[list[str], list[str]]]:
    """``(argv, test_args)`` per command of a shell block: ``\\`` continuations joined, comments dropped (a
    ``# test:`` comment's arguments returned separately), ``VAR=value`` prefixes dropped."""
    commands = []
    joined = re.sub(r"\\\n\s*", " ", code)
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        extra: list[str] = []
        m = TEST_MARK.search(line)
        if m:
            extra = shlex.split(m["arg"])
            line = line[: m.start()]
        argv = shlex.split(line, comments=True)
        while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
            argv.pop(0)
        if argv:
            commands.append((argv, extra))
    return commands


# ------------------------------------------------------------------------------------------- comparing output

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _tolerance(text: str) -> float:
    """Half a unit of the last digit shown (``0.00639`` -> ``5e-6``; ``1.2e-3`` -> ``5e-5``)."""
    mant, _, exp = text.lower().lstrip("+-").partition("e")
    decimals = len(mant.partition(".")[2])
    return 0.5 * 10.0 ** (-decimals + (int(exp) if exp else 0))


def output_matches(expected: str, actual: str) -> str | None:
    """``None`` when ``actual`` matches ``expected`` (``...``: any text; numbers agree to the digits shown;
    runs of spaces and trailing blanks ignored), else a message."""
    pattern, numbers = [], []
    pos = 0
    norm = "\n".join(" ".join(line.split()) for line in expected.strip().splitlines())
    for m in re.finditer(r"\.\.\.|" + NUMBER.pattern, norm):
        pattern.append(re.escape(norm[pos : m.start()]))
        if m.group() == "...":
            pattern.append(r".*?")
        else:
            pattern.append(f"({NUMBER.pattern})")
            numbers.append(m.group())
        pos = m.end()
    pattern.append(re.escape(norm[pos:]))
    got = "\n".join(" ".join(line.split()) for line in actual.strip().splitlines())
    m = re.fullmatch("".join(pattern), got, flags=re.DOTALL)
    if m is None:
        return f"printed output differs from the page.\n--- page:\n{expected.strip()}\n--- printed:\n{actual.strip()}"
    for want, have in zip(numbers, m.groups()):
        if not math.isclose(float(want), float(have), rel_tol=0, abs_tol=_tolerance(want) * (1 + 1e-9)):
            return f"printed {have} where the page shows {want}\n--- printed:\n{actual.strip()}"
    return None


# ---------------------------------------------------------------------------------------- checking sh blocks


@functools.cache
def _root_parser() -> argparse.ArgumentParser:
    from egnn.experiments.cli import build_parser

    return build_parser()


def leaf_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of the ``egnn`` command named by ``argv`` (without ``egnn``) and the words after its name."""
    parser = _root_parser()
    words = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not words or words[0] not in subs[0].choices:
            if subs and not (words and words[0] in ("--help", "-h", "--version")):
                raise ValueError(f"'egnn {' '.join(argv)}': no such command (choose from "
                                 f"{', '.join(subs[0].choices)})")
            return parser, words
        parser = subs[0].choices[words.pop(0)]


def check_egnn_line(argv: list[str]) -> None:
    """The command exists and every ``--flag`` is one of its options."""
    parser, rest = leaf_parser(argv)
    known = set(parser._option_string_actions)
    for w in rest:
        if w.startswith("--") and w.split("=")[0] not in known:
            raise ValueError(f"'egnn {' '.join(argv)}': {w.split('=')[0]} is not an option of this command")


def check_shown_command(argv: list[str]) -> str:
    """Check one command of an ``sh`` block; returns what kind it was."""
    prog = argv[0]
    if prog == "egnn":
        check_egnn_line(argv[1:])
        return "egnn"
    if prog in ("torchrun", "srun") and "egnn.experiments.cli" in argv:
        check_egnn_line(argv[argv.index("egnn.experiments.cli") + 1 :])
        return "egnn"
    if prog in ("python", "python3") and argv[1:2] and argv[1].endswith(".py"):
        script = ROOT / argv[1]
        if not script.is_file():
            raise ValueError(f"{argv[1]}: no such script")
        text = script.read_text(encoding="utf-8")
        for w in argv[2:]:
            if w.startswith("--") and f'"{w.split("=")[0]}"' not in text:
                raise ValueError(f"{argv[1]} has no option {w}")
        return "script"
    if prog == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M))
        for t in argv[1:]:
            if "=" not in t and t not in targets:
                raise ValueError(f"make {t}: no such target in the Makefile")
        return "make"
    return "other"


# ------------------------------------------------------------------------------------------------- running


def run_egnn(argv: list[str]) -> tuple[int, str]:
    """``egnn ARGV`` in this process: its exit code and what it printed on stdout."""
    from egnn.experiments.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def run_python(code: str, namespace: dict, name: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the page's own example
    return buf.getvalue()
