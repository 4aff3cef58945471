"""Shared hypothesis settings and strategies for the fuzz tests.

Bounded in time: few examples each, a deadline per example, no example
database written into the tree; the whole fuzz set runs in a few seconds.
CI (``CI=true``) runs a fixed set of examples, so a red run is reproducible;
developers' runs draw new ones each time.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=150,
    # ms per example: a hang or a blow-up fails the test; generous, since a shared
    # 2-core host under load must not turn a slow example into a flaky failure.
    deadline=5000,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def near(cls: type) -> st.SearchStrategy[Any]:
    """Objects shaped like dataclass ``cls``: its field names, values that are
    sometimes of the right type, sometimes anything (reaches past the top level)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return JSON
    hints = typing.get_type_hints(cls)
    fields = {f.name: st.one_of(JSON, _typed(hints[f.name])) for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries({}, optional=fields) | JSON


def _typed(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return st.lists(_typed(item), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), _typed(typing.get_args(tp)[1]), max_size=3)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return near(tp)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(min_value=-(2**65), max_value=2**65),
        float: st.floats(),
        str: st.text(max_size=10),
        bool: st.booleans(),
        bytes: st.text(alphabet="ABCDabcd0123+/=", max_size=12),
    }
    return simple.get(tp, JSON)
