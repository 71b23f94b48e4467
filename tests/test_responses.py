"""Reading OneRoster response bodies (``producer.responses``): error bodies of every shape and
the data body of a 200."""

from __future__ import annotations

import pytest

from producer.responses import describe_body, records_of


@pytest.mark.parametrize(
    ("body", "description", "code_minor", "implied"),
    [
        (
            b'{"imsx_codeMajor":"failure","imsx_severity":"error","imsx_description":"busy",'
            b'"imsx_CodeMinor":{"imsx_codeMinorField":[{"imsx_codeMinorFieldName":"T",'
            b'"imsx_codeMinorFieldValue":"server_busy"}]}}',
            "busy",
            "server_busy",
            429,
        ),
        (
            b'{"statusInfoSet":[{"imsx_codeMajor":"failure","imsx_description":"no such field",'
            b'"imsx_codeMinor":"invalid_filter_field"}]}',
            "no such field",
            "invalid_filter_field",
            400,
        ),
        (
            b'{"statusInfoSet":{"imsx_description":"denied","imsx_codeMinor":"forbidden"}}',
            "denied",
            "forbidden",
            403,
        ),
        (
            b'{"imsx_codeMajor":"failure","imsx_description":"bad","imsx_codeMinor":"invalid_data"}',
            "bad",
            "invalid_data",
            400,
        ),
        (
            b'{"error":"invalid_token","error_description":"expired"}',
            "expired",
            "invalid_token",
            None,
        ),
        (b'{"message":"Internal error"}', "Internal error", None, None),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "502 Bad Gateway", None, None),
        (b"upstream connect error", "upstream connect error", None, None),
        (b"", "empty body", None, None),
    ],
)
def test_error_bodies_of_every_shape_are_described(body, description, code_minor, implied):
    """1.2 imsx, 1.1 statusInfoSet (list or object), flat, OAuth, HTML, text and empty bodies."""
    info = describe_body(body)
    assert info.description == description
    assert info.code_minor == code_minor
    assert info.implied_status == implied


def test_200_with_an_error_envelope_is_not_an_empty_page():
    """A 200 carrying an imsx failure yields no records and the status it implies."""
    body = b'{"imsx_codeMajor":"failure","imsx_codeMinor":"unauthorisedrequest"}'
    records, status = records_of(body, "users", url="u")
    assert records == []
    assert status is not None
    assert status.implied_status == 401
    assert records_of(b'{"users":[],"statusInfoSet":[]}', "users", url="u") == ([], None)
