"""The documentation is true to the code: every command in a ```bash block of README.md and docs/*.md
is parsed by the parser that would run it (the fast ones, --print_config and --help, are run), every
link resolves inside the repository or is a public https URL, and nothing cites files outside it."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import re
import runpy
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonargparse
import pytest

from arjepa_pl.cli import EXTRA_COMMANDS, ArJepaCLI, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
# Programs documented but not run here, and the first arguments they may take.
EXTERNAL = {"pip": {"install"}, "wandb": {"login", "sync"}, "scancel": None, "ruff": {"check"}, "mypy": None}


def bash_commands(text: str) -> list[list[str]]:
    """Each command line of the ```bash blocks (continuations joined, comments dropped), split into
    words, a `&&` chain into its commands."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


COMMANDS = [(doc.relative_to(REPO).as_posix(), command) for doc in DOCS for command in bash_commands(doc.read_text())]


class ParseOnly(ArJepaCLI):
    """The CLI as `python -m arjepa_pl` builds it, stopped after parsing: every key of every config
    file and override is checked against the classes it configures, nothing is instantiated."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand) -> None:
        pass


@pytest.fixture(scope="module")
def cli_parser():
    return ParseOnly(args=["fit", "--config", "configs/vjepa.yaml"]).parser


class Parsed(Exception):
    pass


@contextlib.contextmanager
def stop_after_parsing():
    """argparse and jsonargparse parsers raise `Parsed` once they have parsed (or exit on an error),
    so a script's main() is checked up to its arguments and does nothing else."""
    originals = {cls: cls.parse_args for cls in (argparse.ArgumentParser, jsonargparse.ArgumentParser)}

    def patched(cls):
        def parse_args(self, *args, **kwargs):
            originals[cls](self, *args, **kwargs)
            raise Parsed

        return parse_args

    for cls in originals:
        cls.parse_args = patched(cls)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.parse_args = original


def parse_script(run, argv0: str, args: list[str]) -> None:
    saved = sys.argv
    sys.argv = [argv0, *args]
    try:
        with stop_after_parsing(), pytest.raises(Parsed):
            run()
    finally:
        sys.argv = saved


def check_arjepa_pl(args: list[str], cli_parser, capsys) -> None:
    if args[0] in TRAINER_COMMANDS and not {"--print_config", "--help", "-h"} & set(args):
        config = cli_parser.parse_args(args)  # exits (status 2) with the parser's message on a bad key or value
        # A config's required value (`???`, e.g. the paper recipe's train_manifest) must be given.
        missing = [key for key, value in config[args[0]].items() if value == "???"]
        assert not missing, f"the command leaves required keys unset: {missing}"
    elif args[0] in EXTRA_COMMANDS and not {"--help", "-h"} & set(args):
        module = EXTRA_COMMANDS[args[0]][0]
        with stop_after_parsing(), pytest.raises(Parsed):
            __import__(module, fromlist=["main"]).main(args[1:])
    else:  # the fast ones: run them
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code in (0, None)
        out = capsys.readouterr().out
        assert ("trainer:" in out) if "--print_config" in args else ("usage" in out.lower())


def sbatch_command(args: list[str]) -> list[str]:
    """`sbatch [options] SCRIPT ARGS`: the arjepa_pl command the script runs with ARGS."""
    script = next(a for a in args if a.endswith(".sbatch"))
    assert (REPO / script).is_file(), script
    (sub,) = re.findall(r"python -m arjepa_pl (\w+) \"\$@\"", (REPO / script).read_text())
    return [sub, *args[args.index(script) + 1:]]


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{doc}:{' '.join(c)[:60]}" for doc, c in COMMANDS])
def test_documented_command_parses(doc, command, cli_parser, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # commands are written for the repository root
    program, args = command[0], command[1:]
    for word in args:  # repository files named in a command exist
        if re.match(r"(configs|scripts|bench|docs|tests|data_modules|arjepa_pl)/\S+\.\w+$", word):
            assert (REPO / word).exists(), word
    if program == "python" and args[:2] == ["-m", "arjepa_pl"]:
        check_arjepa_pl(args[2:], cli_parser, capsys)
    elif program == "python" and args[:2] == ["-m", "pytest"]:
        assert set(args[2:]) <= {"-q", "-m", "not slow"}, args
    elif program == "python" and args[0] == "-m":  # a module's main(argv), as `python -m` runs it
        parse_script(lambda: importlib.import_module(args[1]).main(args[2:]), args[1], [])
    elif program == "python":
        assert (REPO / args[0]).is_file(), args[0]
        parse_script(lambda: runpy.run_path(str(REPO / args[0]), run_name="__main__"), args[0], args[1:])
    elif program == "sbatch":
        check_arjepa_pl(sbatch_command(args), cli_parser, capsys)
    elif program == "bash":
        assert (REPO / args[0]).is_file(), args[0]
    else:
        assert program in EXTERNAL, f"{doc}: {program!r} is neither ours nor a known tool: add it to EXTERNAL"
        assert EXTERNAL[program] is None or args[0] in EXTERNAL[program], command


def test_the_documentation_has_commands_of_every_kind():
    kinds = {c[0] if c[0] != "python" else " ".join(c[:3]) for _, c in COMMANDS}
    assert {"python -m arjepa_pl", "sbatch", "pip", "wandb"} <= kinds
    assert any("--print_config" in c for _, c in COMMANDS)  # at least one command really runs


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


LINKS = [(doc, target) for doc in DOCS
         for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))]


@pytest.mark.parametrize("doc,target", LINKS, ids=[f"{d.name}:{t}" for d, t in LINKS])
def test_links_resolve_in_the_repository_or_are_public(doc, target):
    parts = urlsplit(target)
    if parts.scheme:
        assert parts.scheme == "https", f"{doc.name}: {target} is not https"
        host = parts.hostname or ""
        assert "." in host and host != "localhost", f"{doc.name}: {target} is not a public address"
        with contextlib.suppress(ValueError):
            assert ipaddress.ip_address(host).is_global, f"{doc.name}: {target} is not a public address"
        return
    path = (doc.parent / parts.path).resolve() if parts.path else doc
    assert path.exists(), f"{doc.name}: {target} does not exist"
    assert REPO in path.parents or path == REPO, f"{doc.name}: {target} leaves the repository"
    if parts.fragment:
        assert parts.fragment in anchors(path), f"{doc.name}: no heading #{parts.fragment} in {path.name}"


def test_docs_cite_nothing_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        for pattern in (r"REFERENCE", r"\bthe issue\b", r"\.\./shared", r"/work/", r"@@"):
            assert not re.search(pattern, text), f"{doc.name} says {pattern!r}"
    sources = [p for folder in ("arjepa_pl", "data_modules", "configs", "bench", "scripts", "tests")
               for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".yaml", ".sh", ".sbatch")]
    cited = [str(p.relative_to(REPO)) for p in sources if re.search(r"REFERENCE(\.md| §)", p.read_text())]
    assert not cited, f"cite papers and public projects by name, not REFERENCE: {cited}"


def test_every_docs_page_says_what_the_reader_will_be_able_to_do():
    for page in DOCS[1:]:
        opening = page.read_text().split("\n\n", 2)[1]
        assert "you will be able to" in opening.lower(), page.name
