"""The generated reference pages (docs/gen_reference.py) agree with what ``biglm --help`` and each verb's ``--help``
print: every config field with its type, default and help, and every verb."""

from __future__ import annotations

import re

import pytest

from biglm.cli import main


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


def test_help_lists_the_top_level_keys(capsys):
    """Config keys outside every section (``init``, ``method``, ``reward``, ``model.FIELD``) are listed too: the
    table used to drop them."""
    align = help_fields(help_text(capsys, ["align", "--help"]))
    finetune = help_fields(help_text(capsys, ["finetune", "--help"]))
    assert list(align)[:4] == ["method", "init", "reward", "model.FIELD"]
    assert list(finetune)[:2] == ["init", "model.FIELD"]
    assert "(default ppo)" in align["method"]
