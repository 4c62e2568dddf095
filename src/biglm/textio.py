"""Text and JSON written by others, read by one set of rules with one-line errors (every reader uses these).

Text is UTF-8; a leading byte-order mark is dropped. Other bytes are a ``BiglmError`` naming the line and
column. JSON is read more strictly than Python's ``json`` module reads it: ``NaN`` and ``Infinity`` (which
``json`` accepts, and which no JSON standard allows) and numbers beyond a float's range (``1e999``, which
``json`` turns into infinity) are refused, so are integers longer than Python converts
(``sys.get_int_max_str_digits()``), nesting deeper than ``MAX_DEPTH`` and strings holding an unpaired
surrogate (``"\\ud800"``: no Unicode text, and no UTF-8 writer or tokenizer takes it).
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from biglm.errors import BiglmError

BOM = "\ufeff"
MAX_DEPTH = 100
"""Deepest nesting of lists and objects accepted (records are a few levels deep)."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(ValueError):
    """A value that valid JSON for our fields cannot hold (raised inside the parser's hooks)."""


def decode_utf8(data: bytes, where: str, line: int = 1) -> str:
    """``data`` as text (a leading BOM dropped when ``line`` is 1); a ``BiglmError`` naming ``where:line`` and
    the column of the first byte that is not UTF-8. ``line`` is the line number ``data`` starts at."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = line + data.count(b"\n", 0, e.start)
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise BiglmError(f"{where}:{at}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                         "save the file as UTF-8") from None
    return text.removeprefix(BOM) if line == 1 else text


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a valid JSON value (non-finite numbers are not allowed)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:24]} is beyond the range of a float")
    return value


def _int(text: str) -> int:
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise _Refused(f"an integer of {len(text.lstrip('-')):,} digits (more than {limit:,})")
    return int(text)


def parse_json(text: str | bytes, where: str, at_line: bool = False) -> Any:
    """The JSON value of ``text`` by the rules above, or a one-line ``BiglmError`` naming ``where`` (with the
    line of a syntax error appended when ``at_line``: ``where`` is then a whole file)."""
    if isinstance(text, bytes | bytearray):
        text = decode_utf8(bytes(text), where)
    text = text.removeprefix(BOM)
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as e:
        raise BiglmError(f"{where}{f':{e.lineno}' if at_line else ''}: not valid JSON ({e.msg})") from None
    except _Refused as e:
        raise BiglmError(f"{where}: {e}") from None
    except RecursionError:
        raise BiglmError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep") from None
    if text.count("[") + text.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(text):
        _check_value(value, where)
    return value


def _check_value(value: Any, where: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and strings with unpaired surrogates (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise BiglmError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str) and _SURROGATE.search(item):
            bad = _SURROGATE.search(item).group()  # type: ignore[union-attr]
            raise BiglmError(f"{where}: a string holds the unpaired surrogate \\u{ord(bad):04x}, which is not "
                             "Unicode text")
