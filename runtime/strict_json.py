"""JSON as the bundle's files must be: no duplicate keys (the later one would silently win) and
no NaN / Infinity (not JSON at all, though Python's json accepts them). The C++ reader
(csrc/json.cpp) refuses the same documents, so both readers agree on what a bundle says."""
from __future__ import annotations

import json
from typing import Any, List, Tuple, Union


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> dict:
    document = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: Union[str, bytes]) -> Any:
    """json.loads that raises ValueError (json.JSONDecodeError is one) on duplicate keys, NaN
    and Infinity."""
    return json.loads(text, object_pairs_hook=_object_without_duplicates,
                      parse_constant=_reject_constant)
