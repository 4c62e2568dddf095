"""The generated reference pages, written at build time by mkdocs-gen-files (never committed):

- ``reference/config.md``: every config field of every verb that takes a config (``--section.field VALUE``),
  with type, default and help: the rows ``--help`` lists (``biglm.config_cli.parser_config_rows``), walked from
  the typed dataclasses and their field docstrings.
- ``reference/cli.md``: ``biglm --help`` and the help of every verb (and sub-verb), rendered by the argparse
  parsers ``biglm.cli`` builds.

``tests/docs/test_reference.py`` imports this file and checks the pages against ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import io
import re

from biglm.cli import COMMANDS, build_parser, main
from biglm.config_cli import parser_config_rows, row_group

WIDTH = 100  # help text is wrapped at this width whatever the terminal building the site

CONFIG_INTRO = """\
# Config reference

Every config field of every command that takes a config, generated from the typed configs: the same table
`biglm COMMAND --help` prints. A field is set in the YAML file given with `--config` (the group is the
top-level key: `train:` then `lr: 1e-3`), or on the command line after it as `--section.field VALUE` (or
`--section.field=VALUE`); a field of each item of a list (`data.sources[i]`) is set in that list in the YAML
file. Precedence: defaults < a resumed run's config < `--config` < the shortcut flags < overrides.
`--print-config` prints the resolved config as YAML. The commands and their flags are in the
[CLI reference](cli.md).
"""

CLI_INTRO = """\
# CLI reference

Every command of `biglm`, with the help its parser prints. The config fields of `pretrain`, `finetune`
and `align` (`--section.field VALUE`) are in the [config reference](config.md).
"""


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """``{verb: its argparse parser}`` for every verb of ``biglm``, in ``biglm --help``'s order."""
    choices = subparsers(build_parser(list(COMMANDS)))
    return {verb: choices[verb] for verb in COMMANDS}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by name (empty for a parser without sub-commands)."""
    return {name: p for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, p in action.choices.items()}


def top_help() -> str:
    """What ``biglm --help`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--help"])
    return out.getvalue()


def md(text: str) -> str:
    """Help text as the inline Markdown of a table cell: HTML and Markdown's special characters escaped."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", html.escape(text, quote=False))


def code(text: str) -> str:
    """``text`` as an inline code span inside a table cell (a pipe would end the cell), with line breaks allowed
    after ``.``, ``_``, ``,`` and ``|`` only (docs/stylesheets/reference.css stops breaks inside words)."""
    if not text:
        return ""
    text = re.sub(r"([._,|])", r"\1<wbr>", html.escape(text, quote=False))
    return "<code>" + text.replace("|", "&#124;") + "</code>"


def config_page() -> str:
    """``reference/config.md``: a section per verb with config fields, a table per group of fields."""
    out = [CONFIG_INTRO]
    for verb, parser in verb_parsers().items():
        rows = parser_config_rows(parser)
        if rows is None:
            continue
        out.append(f"## biglm {verb} {{#{verb}}}\n\n{md(parser.description or COMMANDS[verb][1])} "
                   f"Flags: [`biglm {verb}`](cli.md#{verb}).\n")
        group = None
        for key, tp, default, doc in rows:
            if row_group(key) != group:
                group = row_group(key)
                anchor = f"{verb}-{group.replace(' ', '-')}"
                out.append(f"\n### {group} {{#{anchor}}}\n\n| Field | Type | Default | Description |\n"
                           "|---|---|---|---|")
            out.append(f'| <span id="{verb}.{key}"></span>{code(key)} | {code(tp)} | {code(default)} | {md(doc)} |')
        out.append("")
    return "\n".join(out)


def render_help(parser: argparse.ArgumentParser) -> str:
    """A parser's help at ``WIDTH`` columns."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    return parser.format_help()


def cli_sections(name: str, parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    """A heading, the summary and the help of one command, then the same for its sub-commands."""
    anchor = name.removeprefix("biglm ").replace(" ", "-")
    out = [f"{'#' * level} {name} {{#{anchor}}}\n", f"{md(summary)}\n" if summary else ""]
    if parser_config_rows(parser) is not None:
        out.append(f"Config fields: [`biglm {anchor}` in the config reference](config.md#{anchor}).\n")
    out.append(f"```text\n{render_help(parser).rstrip()}\n```\n")
    for sub, p in subparsers(parser).items():
        out += cli_sections(f"{name} {sub}", p, "", level + 1)
    return out


def cli_page() -> str:
    """``reference/cli.md``: ``biglm --help``, then every verb's help."""
    out = [CLI_INTRO, f"```text\n{top_help().rstrip()}\n```\n"]
    for verb, parser in verb_parsers().items():
        out += cli_sections(f"biglm {verb}", parser, COMMANDS[verb][1], 2)
    return "\n".join(line for line in out if line)


def pages() -> dict[str, str]:
    """``{path under docs/: Markdown}`` of the generated pages."""
    return {"reference/config.md": config_page(), "reference/cli.md": cli_page()}


if __name__ == "<run_path>":  # mkdocs-gen-files runs this file with runpy.run_path during the build
    import mkdocs_gen_files

    for path, text in pages().items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)
