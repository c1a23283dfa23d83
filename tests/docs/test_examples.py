"""Every code block of the README and of the docs pages runs (see ``blocks.py`` for the conventions): each page
is one test that runs its blocks top to bottom in a fresh folder, with the page's ``# test:`` shortenings, and
compares printed output where the page shows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs import blocks as B

PAGES = B.pages()


def _id(p: Path) -> str:
    return str(p.relative_to(B.ROOT))


def test_every_block_has_a_known_kind():
    bad = [f"{page.name}:{b.line}: ```{b.kind or '(none)'}" for page in map(B.read_blocks, PAGES)
           for b in page.blocks if b.kind not in B.KNOWN_KINDS]
    assert not bad, "code blocks must be one of " + ", ".join(sorted(B.KNOWN_KINDS)) + ":\n" + "\n".join(bad)


def test_output_blocks_follow_an_executed_block():
    for page in map(B.read_blocks, PAGES):
        for prev, b in zip([None, *page.blocks], page.blocks):
            if b.kind == "output":
                assert prev is not None and prev.kind in B.RUN_KINDS, f"{page.name}:{b.line}: output of nothing"


@pytest.mark.parametrize("path", PAGES, ids=_id)
def test_shown_commands_exist(path: Path):
    """``sh`` blocks: every ``egnn`` command and flag exists, every script and make target too."""
    page = B.read_blocks(path)
    for b in page.blocks:
        if b.kind == "sh":
            for argv, _ in B.shell_commands(b.code):
                try:
                    B.check_shown_command(argv)
                except ValueError as err:
                    pytest.fail(f"{page.name}:{b.line}: {err}")


@pytest.mark.parametrize("path", [p for p in PAGES if any(b.kind in B.RUN_KINDS for b in B.read_blocks(p).blocks)],
                         ids=_id)
def test_page_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EGNN_PRETRAINED_DIR", raising=False)
    page = B.read_blocks(path)
    namespace: dict = {"__name__": "__main__"}
    printed: str | None = None
    for b in page.blocks:
        where = f"{page.name}:{b.line}"
        if b.kind == "python":
            printed = B.run_python(B.shorten_python(b.code), namespace, where)
        elif b.kind == "bash":
            printed = ""
            for argv, extra in B.shell_commands(b.code):
                assert argv[0] == "egnn", f"{where}: a bash block runs egnn commands only (use sh): {argv}"
                code, out = B.run_egnn(argv[1:] + extra)
                assert code == 0, f"{where}: egnn {' '.join(argv[1:] + extra)} exited with {code}"
                printed += out
        elif b.kind == "output":
            assert printed is not None
            problem = B.output_matches(b.code, printed)
            assert problem is None, f"{where}: {problem}"
