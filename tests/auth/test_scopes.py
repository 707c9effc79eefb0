"""SMART scope grammar, v1 and v2, decisions and narrowing."""

from __future__ import annotations

import pytest

from gateway.auth import scopes


@pytest.mark.parametrize(
    ("text", "context", "kind", "permissions", "filters"),
    [
        ("patient/ImagingStudy.rs", "patient", "ImagingStudy", "rs", ()),
        ("patient/ImagingStudy.read", "patient", "ImagingStudy", "rs", ()),
        ("user/*.cruds", "user", "*", "cruds", ()),
        ("system/*.read", "system", "*", "rs", ()),
        ("patient/*.*", "patient", "*", "cruds", ()),
        ("user/DocumentReference.write", "user", "DocumentReference", "cud", ()),
        ("patient/ImagingStudy.c", "patient", "ImagingStudy", "c", ()),
        (
            "patient/DocumentReference.rs?category=LP29684-5",
            "patient",
            "DocumentReference",
            "rs",
            (("category", "LP29684-5"),),
        ),
        (
            "patient/Observation.s?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "patient",
            "Observation",
            "s",
            (
                (
                    "category",
                    "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                ),
            ),
        ),
    ],
)
def test_parse(text: str, context: str, kind: str, permissions: str, filters: tuple) -> None:
    parsed = scopes.parse(text)
    assert parsed is not None
    assert (parsed.context, parsed.resource_type, parsed.permissions, parsed.filters) == (
        context,
        kind,
        frozenset(permissions),
        filters,
    )
    assert parsed.text == text


@pytest.mark.parametrize(
    "text",
    [
        "patient/ImagingStudy.sr",  # v2 letters out of order
        "patient/ImagingStudy.rr",
        "patient/ImagingStudy.",
        "patient/ImagingStudy.x",
        "admin/ImagingStudy.rs",
        "patient/imagingstudy.rs",
        "patient/ImagingStudy.read?category=x",  # v1 has no filters
        "patient/ImagingStudy.rs?",
        "launch",
        "",
    ],
)
def test_not_resource_scopes(text: str) -> None:
    assert scopes.parse(text) is None


def test_context_scopes_are_known() -> None:
    for text in ("launch", "launch/patient", "openid", "fhirUser", "offline_access"):
        assert scopes.is_known(text)
    assert not scopes.is_known("superuser")


def test_decide() -> None:
    granted = ["patient/ImagingStudy.rs", "patient/DocumentReference.rs?category=LP29684-5"]
    study = scopes.decide(granted, ["patient"], "ImagingStudy", "s")
    assert study.allowed and study.unfiltered
    assert not scopes.decide(granted, ["patient"], "ImagingStudy", "c").allowed
    assert not scopes.decide(granted, ["user"], "ImagingStudy", "r").allowed
    documents = scopes.decide(granted, ["patient"], "DocumentReference", "s")
    assert documents.allowed and not documents.unfiltered
    assert documents.filters == ((("category", "LP29684-5"),),)
    assert scopes.decide(["user/*.read"], ["user"], "Patient", "r").unfiltered
    assert scopes.decide(["system/*.cruds"], ["system"], "ImagingStudy", "c").allowed


def test_narrowing_only_ever_narrows() -> None:
    original = ["launch/patient", "patient/ImagingStudy.rs", "patient/*.read", "offline_access"]
    assert scopes.narrow(original, ["patient/ImagingStudy.rs"]) == ["patient/ImagingStudy.rs"]
    assert scopes.narrow(original, ["patient/ImagingStudy.r"]) == ["patient/ImagingStudy.r"]
    assert scopes.narrow(original, ["patient/DocumentReference.s"]) == [
        "patient/DocumentReference.s"
    ]
    assert scopes.narrow(original, ["patient/ImagingStudy.c"]) is None
    assert scopes.narrow(original, ["user/ImagingStudy.rs"]) is None
    assert scopes.narrow(original, ["openid"]) is None
    granular = ["patient/DocumentReference.rs?category=a"]
    assert scopes.narrow(granular, ["patient/DocumentReference.rs"]) is None
    assert scopes.narrow(granular, ["patient/DocumentReference.r?category=a"]) is not None


def test_descriptions_are_plain_words() -> None:
    assert (
        scopes.describe("patient/ImagingStudy.rs")
        == "Read and search your imaging studies (images)"
    )
    assert "category is LP29684-5" in scopes.describe(
        "patient/DocumentReference.rs?category=LP29684-5"
    )
    assert scopes.describe("offline_access").startswith("Keep access")
