"""Model references, model versions and the error families the core raises."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pynomaly_workers.domain import errors
from pynomaly_workers.domain.errors import InvalidInput, PynomalyError
from pynomaly_workers.domain.models import ModelRef, ModelVersion, check_model_name, parse_model_ref
from pynomaly_workers.domain.scoring import fit_score_stats

# --- parse_model_ref ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fraud", ModelRef("fraud", None)),
        ("fraud@3", ModelRef("fraud", 3)),
        ("fraud@12", ModelRef("fraud", 12)),
        ("fraud@007", ModelRef("fraud", 7)),
        ("f", ModelRef("f", None)),
        ("0", ModelRef("0", None)),
        ("Fraud-v2.prod_1", ModelRef("Fraud-v2.prod_1", None)),
        ("Fraud-v2.prod_1@1", ModelRef("Fraud-v2.prod_1", 1)),
        ("m" * 128 + "@99", ModelRef("m" * 128, 99)),
    ],
)
def test_valid_references_parse(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize("text", ["fraud", "fraud@3", "a.b-c_d@10"])
def test_a_reference_prints_as_it_was_written(text: str) -> None:
    assert str(parse_model_ref(text)) == text


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("", ""),
        ("@3", ""),
        ("-fraud", "-fraud"),
        (".fraud", ".fraud"),
        ("_fraud", "_fraud"),
        ("has space", "has space"),
        ("a/b", "a/b"),
        ("fraud:1", "fraud:1"),
        ("fr\u0430ud", "fr\u0430ud"),  # a Cyrillic a must not pass for a Latin one
        ("m" * 129, "m" * 129),
        ("fraud\n", "fraud\n"),
        ("fraud\n@3", "fraud\n"),
    ],
    ids=repr,
)
def test_invalid_names_are_rejected_with_the_rules(text: str, name: str) -> None:
    expected = f"name {name!r} is invalid: use 1-128 letters, digits, '_', '-' or '.'"

    with pytest.raises(InvalidInput, match=re.escape(expected)):
        parse_model_ref(text)


@pytest.mark.parametrize("text", ["fraud@2147483648", "fraud@" + "9" * 5000], ids=len)
def test_versions_past_32_bits_are_bad_input(text: str) -> None:
    with pytest.raises(InvalidInput, match="is past the largest, 2147483647"):
        parse_model_ref(text)


@pytest.mark.parametrize("text", ["fraud@0", "fraud@00"], ids=repr)
def test_versions_must_be_positive_integers(text: str) -> None:
    expected = f"model version in {text!r} must be a positive integer"

    with pytest.raises(InvalidInput, match=f"^{re.escape(expected)}$"):
        parse_model_ref(text)


@pytest.mark.parametrize(
    "text",
    [
        "fraud@",
        "fraud@-1",
        "fraud@+1",
        "fraud@1.5",
        "fraud@ 1",
        "fraud@1@2",
        "fraud@³",
        "fraud@٣",
        "fraud@1\n",
        "fraud@_champion",
        "fraud@champion!",
        "fraud@" + "c" * 65,
    ],
    ids=repr,
)
def test_a_suffix_must_be_a_version_or_an_alias(text: str) -> None:
    suffix = text.partition("@")[2]
    expected = f"{suffix!r} in {text!r} is neither a version number nor an alias"

    with pytest.raises(InvalidInput, match=f"^{re.escape(expected)}"):
        parse_model_ref(text)


@pytest.mark.parametrize(
    ("text", "alias"),
    [("fraud@champion", "champion"), ("fraud@x", "x"), ("fraud@shadow-2", "shadow-2")],
)
def test_an_alias_reference_names_the_alias(text: str, alias: str) -> None:
    ref = parse_model_ref(text)

    assert (ref.name, ref.version, ref.alias, str(ref)) == ("fraud", None, alias, text)
    assert not ref.is_exact


@pytest.mark.parametrize("value", [None, 3, 3.0, ["fraud"], {"name": "fraud"}, b"fraud"], ids=repr)
def test_a_non_string_reference_is_rejected(value: object) -> None:
    expected = f"model must be a string like 'name', 'name@3' or 'name@champion', got {value!r}"

    with pytest.raises(InvalidInput, match=f"^{re.escape(expected)}$"):
        parse_model_ref(value)


def test_check_model_name_returns_a_valid_name() -> None:
    assert check_model_name("fraud-v2") == "fraud-v2"


# --- ModelVersion ------------------------------------------------------------------------


def test_a_model_version_exposes_its_threshold_label_and_content_hash() -> None:
    # Given
    stats = fit_score_stats(np.linspace(0.0, 1.0, 101), contamination=0.1)
    sha = "ab" * 32

    # When
    version = ModelVersion(
        id=1,
        name="fraud",
        version=4,
        algorithm="iforest",
        artifact_sha256=sha,
        onnx_sha256=None,
        n_features=3,
        stats=stats,
    )

    # Then
    assert version.threshold == stats.threshold
    assert version.label == "fraud@4"
    assert parse_model_ref(version.label) == ModelRef("fraud", 4)
    assert version.content_hash == sha
    assert version.active is True
    assert version.params == {}


# --- error families ----------------------------------------------------------------------

INPUT_ERRORS = [
    errors.InvalidRecords,
    errors.PayloadTooLarge,
    errors.UnknownModel,
    errors.UnknownDataset,
    errors.InvalidSource,
    errors.InvalidMessage,
]


@pytest.mark.parametrize("error", INPUT_ERRORS)
def test_caller_mistakes_are_input_errors(error: type[InvalidInput]) -> None:
    # Tasks fail these without retrying, so they must all be InvalidInput
    assert issubclass(error, InvalidInput)
    assert issubclass(error, PynomalyError)


def test_a_corrupt_artifact_is_not_the_callers_mistake() -> None:
    assert issubclass(errors.ArtifactCorrupt, PynomalyError)
    assert not issubclass(errors.ArtifactCorrupt, InvalidInput)


def test_error_codes_are_distinct_snake_case_names() -> None:
    codes = [e.code for e in [InvalidInput, *INPUT_ERRORS]] + [errors.ArtifactCorrupt.code]

    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in codes)
