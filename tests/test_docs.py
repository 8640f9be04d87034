"""The documentation's code blocks are tests: README.md, CONTRIBUTING.md and every page of docs/.

Every ``bash`` and ``python`` block runs, page by page in a temporary folder, in page order, with
the tiny models: ``iapas ...`` lines through the typer app (in this process), Python blocks with
``exec`` (one namespace per page). A block that needs what the suite does not have carries, on
the line just above its fence, ``<!-- needs: WHAT -->`` (``real-models``, ``gpu``, ``dataset``,
``network``, ``cluster``, ``station``, ``disk``, ``install``); it is only checked: Python parses,
and each ``iapas`` command names a command of the app and only options that command has.

``iapas testing make-tiny-models DIR`` is the one command not run as written: DIR becomes a link
to the session's tiny models (``tiny_models`` in conftest.py), so the models are built once.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
NEEDS = {"real-models", "gpu", "dataset", "network", "cluster", "station", "disk", "install"}
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*needs:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str  # "bash" or "python"
    code: str
    needs: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The bash and python blocks of a markdown page, with the ``needs`` marker above each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks, lang = opening.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        above = lines[i - 1] if i else ""
        marker = MARKER.match(above)
        needs = set(marker.group(1).split()) if marker else set()
        if lang.lower() in RUN_LANGS:
            code = "\n".join(line[len(indent):] for line in lines[i + 1:end])
            blocks.append(Block(page, i + 1, RUN_LANGS[lang.lower()], code, needs))
        i = end + 1
    return blocks


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a bash block: lines joined at ``\\``, comments dropped, split at ``&&``/``;``."""
    commands: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words:
            if word in ("&&", ";", "||"):
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [c for c in commands if c]


def is_iapas(command: list[str]) -> bool:
    return command[0] == "iapas" or command[0].endswith("/bin/iapas")


def _app_command():
    import typer

    from iapas.cli import app

    return typer.main.get_command(app)


def check_iapas_command(args: list[str]) -> None:
    """``args`` (after ``iapas``) names a command of the app, and only options that command has."""
    command, path, ctx = _app_command(), ["iapas"], None
    rest = list(args)
    while hasattr(command, "list_commands") and rest and not rest[0].startswith("-"):
        ctx = command.context_class(command, parent=ctx, info_name=path[-1])
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"{' '.join(path)} has no command {rest[0]!r}"
        command, path, rest = sub, [*path, rest.pop(0)], rest
    assert not hasattr(command, "list_commands"), f"{' '.join(path)} is a group: name one of its commands"
    names = {"--help"}
    for param in command.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    for word in rest:
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d.*", word):
            option = word.split("=", 1)[0]
            assert option in names, f"'{' '.join(path)}' has no option {option} (it has {sorted(names)})"


def run_iapas(args: list[str]) -> None:
    from typer.testing import CliRunner

    from iapas.cli import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, f"iapas {shlex.join(args)} exited {result.exit_code}:\n{result.output}"


def run_block(block: Block, namespace: dict, tiny_models: dict[str, Path]) -> None:
    if block.lang == "python":
        exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - the docs' own code
        return
    for command in shell_commands(block.code):
        assert is_iapas(command), f"{block.where}: only iapas commands run here; mark the block <!-- needs: ... -->: {command}"
        args = command[1:]
        if args[:2] == ["testing", "make-tiny-models"]:
            folder = Path([a for a in args[2:] if not a.startswith("-")][0])
            folder.symlink_to(Path(tiny_models["sam"]).parent, target_is_directory=True)
            continue
        run_iapas(args)


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def test_the_pages_have_blocks_and_known_markers():
    assert len(ALL_BLOCKS) > 20
    for block in ALL_BLOCKS:
        assert block.needs <= NEEDS, f"{block.where}: unknown needs {block.needs - NEEDS} (known: {sorted(NEEDS)})"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_every_block_parses_and_names_real_commands_and_options(block: Block):
    if block.lang == "python":
        ast.parse(block.code, block.where)
        return
    for command in shell_commands(block.code):
        if is_iapas(command):
            check_iapas_command(command[1:])


RUN_PAGES = sorted({b.page for b in ALL_BLOCKS if not b.needs}, key=str)


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_runnable_blocks_of_a_page_run(page: Path, tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in code_blocks(page):
        if not block.needs:
            run_block(block, namespace, tiny_models)


def test_the_readme_has_the_two_setup_commands_ci_runs():
    """The first installs only the package (and the pinned CPU torch) and runs the tiny demo; the
    second installs the test extra and runs the tests. .ci/run takes them from the README."""
    install = [b for b in code_blocks(ROOT / "README.md") if "install" in b.needs]
    assert len(install) == 2
    first, second = install
    assert "torch==2.13.0 -e ." in first.code and "[" not in first.code and "iapas demo --tiny" in first.code
    assert '-e ".[test]"' in second.code and "pytest" in second.code
    assert "<!-- needs: install -->" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def test_a_wrong_option_or_command_is_caught():
    with pytest.raises(AssertionError, match="no option --no-such-option"):
        check_iapas_command(["segment", "x/", "--no-such-option", "1"])
    with pytest.raises(AssertionError, match="no command 'segmnt'"):
        check_iapas_command(["segmnt", "x/"])
    with pytest.raises(AssertionError, match="is a group"):
        check_iapas_command(["testing"])
    check_iapas_command(["testing", "make-tiny-models", "tiny-models", "--seed", "1"])


def test_the_readme_and_contributing_links_resolve():
    """mkdocs --strict checks the site's links; the two pages outside it are checked here."""
    for page in (ROOT / "README.md", ROOT / "CONTRIBUTING.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
