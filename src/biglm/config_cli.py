"""Typed configs on the command line: ``--help`` that lists every field and ``--print-config``.

A verb that takes ``--section.field VALUE`` overrides calls ``add_config_options(parser, sections)``
when it registers its sub-parser: its ``--help`` then lists each field of each section's dataclass
(nested ones and lists of them included) with its type, default and the first sentence of the
docstring under the field, and ``--print-config`` asks the handler to print the resolved config (see
``print_config``) instead of running. The field list is built only when help is asked for, so
registering costs no import of the config classes. ``parser_config_rows`` gives the same rows to the
documentation's generated reference (``docs/gen_reference.py``).

The rest of a verb's config glue is here too, once: ``sections_of`` (the sections ``--help`` lists),
``flag_overrides`` (shortcut flags such as ``--init`` as overrides), ``config_from_args`` (defaults < a saved
config < ``--config`` < flags < overrides) and ``run_config`` (``--out`` / ``--resume`` / ``--print-config`` of a
run that starts from a checkpoint).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from biglm.configurable import load_config, load_yaml, to_dict
from biglm.errors import BiglmError

Sections = Callable[[], Mapping[str, type]]
"""Returns ``{section name: dataclass}`` (called lazily, when help is shown)."""
Extra = Callable[[], Mapping[str, tuple[str, str, str]]]
"""Returns ``{dotted key: (type, default, help)}`` for keys that are no dataclass field (``model.preset``)
or whose meaning differs in this verb; they replace or precede the generated entries."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of dataclass ``cls`` (PEP 257 attribute docstrings), those of
    its dataclass bases included (a subclass's own win)."""
    docs = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return docs
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def one_line(doc: str) -> str:
    """The first sentence of a docstring on one line, ``code`` quotes dropped."""
    text = " ".join(doc.split()).replace("``", "")
    match = re.match(r"(.+?[.!?])(\s+[A-Z(`]|$)", text)
    return match.group(1) if match else text


def type_name(tp: Any) -> str:
    """A short name for an annotated type: INT, FLOAT, STR, BOOL, {a,b}, INT|null, LIST, ..."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return "|".join(inner) + ("|null" if type(None) in typing.get_args(tp) else "")
    if origin is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if args and dataclasses.is_dataclass(args[0]):
            return "LIST"
        if origin is tuple and args:
            return "[" + ",".join(type_name(a) for a in args) + "]"
        return "LIST"
    if origin is dict:
        return "MAPPING"
    return getattr(tp, "__name__", str(tp)).upper()


def show(value: Any) -> str:
    """A default as it would be written in YAML (one line)."""
    if dataclasses.is_dataclass(value):
        return "{...}"
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def describe(cls: type, prefix: str, listed: dict[type, str] | None = None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every field of dataclass ``cls``, nested ones expanded (the
    fields of a list's item class once, under the first list of that class)."""
    listed = {} if listed is None else listed
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = f"{prefix}.{f.name}", hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if dataclasses.is_dataclass(tp):
            out += describe(tp, key, listed)
            continue
        doc = one_line(docs.get(f.name, ""))
        inner = typing.get_args(tp)
        item = inner[0] if typing.get_origin(tp) is list and inner and dataclasses.is_dataclass(inner[0]) else None
        if item is not None and item in listed:
            doc = f"{doc} Items as {listed[item]}[i].".strip()
        out.append((key, type_name(tp), "required" if default is dataclasses.MISSING else show(default), doc))
        if item is not None and item not in listed:
            listed[item] = key
            out += describe(item, f"{key}[i]", listed)
    return out


def config_rows(sections: Mapping[str, type],
                extra: Mapping[str, tuple[str, str, str]] | None = None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) of every config field a verb takes, in ``--help``'s order: the ``extra``
    keys outside the sections first (top-level keys such as ``init``, ``model.FIELD``), then each section's."""
    extra = dict(extra or {})
    rows = [(k, *extra[k]) for k in extra if k.split(".")[0] not in sections]
    for name, cls in sections.items():
        generated = describe(cls, name)
        keys = {r[0] for r in generated}
        rows += [(k, *extra[k]) for k in extra if k.split(".")[0] == name and k not in keys]
        rows += [(k, *extra[k]) if k in extra else (k, t, d, h) for k, t, d, h in generated]
    return rows


def row_group(key: str) -> str:
    """The group a config key is listed under: its section, or ``top level`` for a key outside every section."""
    return key.split(".")[0] if "." in key else "top level"


def config_help(sections: Mapping[str, type], extra: Mapping[str, tuple[str, str, str]] | None = None) -> str:
    """The field table shown under ``--help``."""
    rows = config_rows(sections, extra)
    width = min(44, max(len(f"--{k} {t}") for k, t, _, _ in rows) + 2)
    lists = list(dict.fromkeys(r[0].split("[i]")[0] for r in rows if "[i]" in r[0]))
    lines = ["config fields: --section.field VALUE (or --section.field=VALUE), after the YAML file"
             + "".join(f"; {k}[i] are the fields of each item given in {k}" for k in lists) + ":"]
    section = ""
    for key, tp, default, doc in rows:
        if row_group(key) != section:
            section = row_group(key)
            lines.append(f"\n{section}:")
        left = f"    {key} {tp}" if "[i]" in key else f"  --{key} {tp}"
        pad = left.ljust(width) if len(left) < width else left + "\n" + " " * width
        lines.append(f"{pad} (default {default}) {doc}".rstrip())
    return "\n".join(lines)


class _ConfigHelp(argparse.Action):
    """``-h/--help`` that appends the field table to the usual help, built only when asked for."""

    def __init__(self, option_strings: list[str], sections: Sections, extra: Extra | None, **kw: Any) -> None:
        super().__init__(option_strings, nargs=0, default=argparse.SUPPRESS, **kw)
        self.sections, self.extra = sections, extra

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = config_help(self.sections(), self.extra() if self.extra else None)
        parser.print_help()
        parser.exit()


def add_config_options(parser: argparse.ArgumentParser, sections: Sections, extra: Extra | None = None) -> None:
    """Give a verb's parser (created with ``add_help=False``) a ``--help`` listing every config field and a
    ``--print-config`` flag (``args.print_config``)."""
    parser.add_argument("-h", "--help", action=_ConfigHelp, sections=sections, extra=extra,
                        help="show this help, with every config field, and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults < YAML < overrides) as YAML and exit")


def parser_config_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str, str]] | None:
    """The config fields a verb's ``--help`` lists (see ``config_rows``), or None for a verb without config
    fields: what the documentation's reference page is generated from."""
    for action in parser._actions:
        if isinstance(action, _ConfigHelp):
            return config_rows(action.sections(), action.extra() if action.extra else None)
    return None


def sections_of(cls: type, names: Iterable[str]) -> dict[str, type]:
    """``{name: dataclass}`` of the fields ``names`` of config class ``cls``: the sections ``--help`` lists."""
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in names}


def flag_overrides(args: argparse.Namespace, shortcuts: Mapping[str, str]) -> list[str]:
    """The shortcut flags given on the command line (``shortcuts``: attribute of ``args`` -> dotted config key)
    as ``--key value`` overrides; values go as JSON strings so that YAML reads them back verbatim."""
    out: list[str] = []
    for flag, key in shortcuts.items():
        value = getattr(args, flag, None)
        if value is not None:
            out += [f"--{key}", json.dumps(value)]
    return out


def config_from_args(cls: type, args: argparse.Namespace, shortcuts: Mapping[str, str],
                     saved: dict[str, Any] | None = None, more: Iterable[str] = ()) -> Any:
    """The config of a verb's run: defaults < ``saved`` (a run's or checkpoint's config) < ``--config`` <
    the shortcut flags < ``more`` < the ``--section.field value`` overrides (see ``flag_overrides``)."""

    overrides = [*flag_overrides(args, shortcuts), *more, *(getattr(args, "overrides", None) or [])]
    return load_config(cls, args.config, overrides, base=saved)


def print_config(config: Any, file: Any = None) -> None:
    """Print a config (a dataclass or a mapping) as YAML."""

    data = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    print(yaml.safe_dump(data, sort_keys=False).rstrip(), file=file or sys.stdout)


def run_config(args: argparse.Namespace, resolve: Callable[[argparse.Namespace, dict[str, Any] | None], Any]) -> Any:
    """The config of a run that starts from a checkpoint (``finetune``, ``align``): ``--out`` is required,
    ``--resume`` reads the run's ``config.yaml`` as the base of ``resolve(args, saved)``. With ``--print-config``
    it prints the config (its model section as given: it is resolved against ``--init`` when the run starts)
    and returns None."""

    if args.out is None and not args.print_config:
        raise BiglmError("--out is required: the run folder to write")
    saved = None
    if args.resume:
        if not (args.out / "config.yaml").is_file():
            raise BiglmError(f"{args.out}: no config.yaml to resume from")
        saved = load_yaml(args.out / "config.yaml")
    cfg = resolve(args, saved)
    if args.print_config:
        data = cfg.to_dict()
        data["model"] = cfg.model_overrides
        print_config(data)
        return None
    return cfg
