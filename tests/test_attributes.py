"""Property: no `$`-prefixed, dotted or NUL key passes validation, at any depth."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.opportunities import NewOpportunity, attribute_problems
from tests.conftest import opportunity

keys = st.text(min_size=1, max_size=12)
leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
maps = st.recursive(
    st.dictionaries(keys, leaves, max_size=4),
    lambda children: st.dictionaries(keys, children | st.lists(children, max_size=3), max_size=4),
    max_leaves=20,
)


def _unsafe_keys(node, depth=1):
    if isinstance(node, list):
        return any(_unsafe_keys(item, depth) for item in node)
    if not isinstance(node, dict):
        return False
    return any(
        k.startswith("$") or "." in k or "\x00" in k or _unsafe_keys(v, depth + 1)
        for k, v in node.items()
    )


@settings(max_examples=300, deadline=None)
@given(maps)
def test_an_unsafe_key_never_passes(attributes) -> None:
    try:
        NewOpportunity.model_validate_json(json.dumps(opportunity(attributes=attributes)))
        accepted = True
    except ValidationError:
        accepted = False
    if _unsafe_keys(attributes):
        assert not accepted
    if accepted:
        assert attribute_problems(attributes) == []


@given(st.sampled_from(["$ne", "$where", "a.b", "x\x00"]), st.integers(1, 5))
def test_an_unsafe_key_is_found_at_any_depth(key, depth) -> None:
    node: dict = {key: 1}
    for _ in range(depth - 1):
        node = {"n": node}
    problems = attribute_problems(node)
    assert [p.path for p in problems] == ["attributes." + ".".join(["n"] * (depth - 1) + [key])]
