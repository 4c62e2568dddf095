"""The generated reference pages (docs/gen_reference.py) agree with what ``biglm --help`` and each verb's ``--help``
print: every config field with its type, default and help, and every verb."""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

import pytest

from biglm.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
CONFIG_VERBS = ("pretrain", "finetune", "align")  # the verbs whose --help lists config fields


def load_gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return load_gen_reference()


@pytest.fixture(scope="module")
def pages(gen) -> dict[str, str]:
    return gen.pages()


def help_text(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def help_fields(out: str) -> dict[str, str]:
    """``{key: its entry}`` of the config field table of a verb's ``--help``, in order; an entry whose key and
    type are long continues on the next line."""
    entries: dict[str, str] = {}
    key = None
    for line in out.split("\nconfig fields:", 1)[1].splitlines()[1:]:
        match = re.match(r"  --(\S+)|    (\S+\[i\]\S*)", line)
        if match:
            key = match.group(1) or match.group(2)
            entries[key] = line
        elif line.startswith(" " * 20) and key:
            entries[key] += line
    return entries


def cell(text: str) -> str:
    """A table cell of the page as plain text."""
    return html.unescape(re.sub(r"\\(.)", r"\1", re.sub(r"<[^>]+>", "", text))).strip()


def page_rows(page: str, verb: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of each row in the page's section of ``verb``."""
    section = page.split(f"\n## biglm {verb} ", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| <span id="):
            key, tp, default, doc = (cell(c) for c in line.strip("|").split(" | "))
            rows.append((key, tp, default, doc))
    return rows


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_config_page_lists_every_field_of_help(verb, pages, capsys):
    fields = help_fields(help_text(capsys, [verb, "--help"]))
    rows = page_rows(pages["reference/config.md"], verb)
    assert [r[0] for r in rows] == list(fields)  # the same fields, in the same order
    for key, tp, default, doc in rows:
        entry = " ".join(fields[key].split())
        assert f"{key} {tp}".strip() in entry, key
        assert f"(default {default}) {doc}".strip() in entry, key
        assert default, key
    if verb == "pretrain":
        assert len(rows) >= 108  # RunConfig's leaf fields (tests/train/test_train_cli.py) and model.preset, ...
        assert dict((r[0], r[1:3]) for r in rows)["train.lr"] == ("FLOAT", "0.0006")


def test_config_page_has_a_section_for_each_verb_with_config_fields(pages, capsys):
    page = pages["reference/config.md"]
    with_fields = [v for v in COMMANDS if "\nconfig fields:" in help_text(capsys, [v, "--help"])]
    assert with_fields == list(CONFIG_VERBS)
    assert re.findall(r"^## biglm (\S+)", page, flags=re.M) == with_fields


def test_help_lists_the_top_level_keys(capsys):
    """Config keys outside every section (``init``, ``method``, ``reward``, ``model.FIELD``) are listed too: the
    table used to drop them."""
    align = help_fields(help_text(capsys, ["align", "--help"]))
    finetune = help_fields(help_text(capsys, ["finetune", "--help"]))
    assert list(align)[:4] == ["method", "init", "reward", "model.FIELD"]
    assert list(finetune)[:2] == ["init", "model.FIELD"]
    assert "(default ppo)" in align["method"]


def test_cli_page_has_every_verb_of_biglm_help(pages, capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    verbs = re.findall(r"^  (\S+)  ", top.split("commands:", 1)[1], flags=re.M)
    assert verbs == list(COMMANDS)
    page = pages["reference/cli.md"]
    assert re.findall(r"^## biglm (\S+) ", page, flags=re.M) == verbs
    for verb in verbs:
        assert f"usage: biglm {verb}" in page, verb
    assert "### biglm tokenizer train " in page and "usage: biglm tokenizer train" in page  # sub-verbs too


def test_cli_page_is_the_same_in_any_terminal(gen, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = gen.cli_page()
    monkeypatch.setenv("COLUMNS", "200")
    assert gen.cli_page() == narrow
