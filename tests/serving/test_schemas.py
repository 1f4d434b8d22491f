"""Request validation: ids as ints or digit strings, bounded distinct candidate lists, errors name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.schemas import rank_request_model


def errors(payload: dict, max_candidates: int = 1_000) -> list[tuple]:
    with pytest.raises(ValidationError) as caught:
        rank_request_model(max_candidates).model_validate_json(payload if isinstance(payload, str) else __import__("json").dumps(payload))
    return [tuple(e["loc"]) for e in caught.value.errors()]


def test_integer_and_string_ids_are_the_same_id():
    request = rank_request_model(10).model_validate({"member_id": "42", "candidates": [1, "2", " 3 "], "k": 2})
    assert request.member_id == 42 and request.candidates == [1, 2, 3] and request.k == 2


@pytest.mark.parametrize("text", ["１２", "٣", "-٣", "--3", "1_000", "+"])
def test_only_ascii_digit_strings_are_ids(text):
    """Full-width or Arabic-Indic digits pass str.isdigit and int() takes them: they are not ids a client sent
    as ASCII, and would alias another entity's id; the error names the field."""
    assert ("member_id",) in errors({"member_id": text, "candidates": [1]})
    assert ("candidates", 1) in errors({"member_id": 1, "candidates": [1, text]})
    assert rank_request_model(10).model_validate({"member_id": "-7", "candidates": ["0"]}).member_id == -7


def test_explore_is_off_unless_asked_for():
    assert rank_request_model(10).model_validate({"member_id": 1, "candidates": [1]}).explore is False
    assert rank_request_model(10).model_validate_json('{"member_id": 1, "candidates": [1], "explore": true}').explore


def test_bound_is_configurable():
    model = rank_request_model(3)
    assert len(model.model_validate({"member_id": 1, "candidates": [1, 2, 3]}).candidates) == 3
    assert errors({"member_id": 1, "candidates": [1, 2, 3, 4]}, max_candidates=3) == [("candidates",)]


@pytest.mark.parametrize(("payload", "location"), [
    ({"member_id": True, "candidates": [1]}, ("member_id",)),
    ({"member_id": 2**63, "candidates": [1]}, ("member_id",)),
    ({"member_id": 1, "candidates": [1, 2.0]}, ("candidates", 1)),
    ({"member_id": 1, "candidates": [5, 6, 5]}, ("candidates",)),
    ({"member_id": 1, "candidates": [1], "k": 1.5}, ("k",)),
    ({"member_id": 1, "candidates": [1], "explore": "yes"}, ("explore",)),
    ({"member_id": 1, "candidates": [1], "explore": 1}, ("explore",)),
    ('{"member_id": 1, "candidates": [1, NaN]}', ("candidates", 1)),
])
def test_bad_values_name_their_field(payload, location):
    assert location in errors(payload)
