"""JSON as the bundle's files must be: no duplicate keys (the later one would silently win), no
NaN / Infinity (not JSON at all, though Python's json accepts them) and at most MAX_DEPTH nested
arrays and objects (Python's json would otherwise recurse until a RecursionError, which is not
a ValueError). The C++ reader (csrc/json.cpp, kMaxDepth) refuses the same documents, so both
readers agree on what a bundle says."""
from __future__ import annotations

import json
from typing import Any, List, Tuple, Union

MAX_DEPTH = 64  # csrc/json.h JsonValue::kMaxDepth


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> dict:
    document = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_depth(document: Any) -> None:
    """Iterative (a recursive walk could itself exhaust the stack)."""
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children = (value.values() if isinstance(value, dict)
                    else value if isinstance(value, list) else None)
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than the limit of {MAX_DEPTH}")
        pending.extend((child, depth + 1) for child in children
                       if isinstance(child, (dict, list)))


def printable(message: str) -> str:
    """message with control characters as \\xNN (as the C++ reader's errors show them), so a
    key or file name from a hostile file cannot break an error message over lines."""
    return "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in message)


def loads_strict(text: Union[str, bytes]) -> Any:
    """json.loads that raises ValueError (json.JSONDecodeError is one) on duplicate keys, NaN,
    Infinity and nesting deeper than MAX_DEPTH."""
    try:
        document = json.loads(text, object_pairs_hook=_object_without_duplicates,
                              parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than the limit of {MAX_DEPTH}") from None
    _check_depth(document)
    return document
