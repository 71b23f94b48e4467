"""Switchable quirks seen in real OneRoster servers, applied as records are served.

The stored records are always spec-shaped; quirks change only what goes on the wire, so the
ground truth stays comparable. Names (use them in ``DistrictSpec.quirks``):

* ``json_booleans``: ``true``/``false`` JSON booleans instead of the strings ``"true"``/``"false"``.
* ``empty_roles``: 1.2 users carry ``roles: []``.
* ``vendor_metadata``: a vendor ``metadata`` object on every record.
* ``date_space``: ``dateLastModified`` with a space instead of ``T``.
* ``date_no_fraction``: ``dateLastModified`` without fractional seconds.
* ``inactive_status``: the legacy ``inactive`` instead of ``tobedeleted``.
* ``missing_optional``: optional fields left out (middleName, email, classCode, ...).
* ``status_info_set``: a 1.1-style ``statusInfoSet`` array beside the collection's data.
* ``x_count``: an ``x-count`` header with the number of records in the page.
* ``no_total_count``: no ``X-Total-Count`` header (some servers send no count at all).

Quirks of the server rather than of its records (seen on outside servers):

* ``scope_required``: the token endpoint refuses a request without ``scope`` (400
  ``invalid_scope``) instead of granting the client's scopes.
* ``oauth1_sha1_only``: OAuth 1.0a verified with HMAC-SHA1 only; a refused signature is answered
  ``401 {"error": "invalid_signature"}`` (a Flask-style body, not imsx).
* ``singular_demographic``: a single-record GET of demographics answers under the key
  ``demographic`` instead of ``demographics``.
* ``filter_empty_list``: a ``filter`` the server cannot parse (any filter) is answered with an
  empty list (200, ``X-Total-Count: 0``) instead of a 400.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

#: Quirks of the records served (applied by ``apply``).
_RECORD_QUIRKS: Final = frozenset(
    (
        "json_booleans",
        "empty_roles",
        "vendor_metadata",
        "date_space",
        "date_no_fraction",
        "inactive_status",
        "missing_optional",
    )
)
#: Quirks of the server, not of the records it serves.
SERVER_QUIRKS: Final = frozenset(
    (
        "status_info_set",
        "x_count",
        "no_total_count",
        "scope_required",
        "oauth1_sha1_only",
        "singular_demographic",
        "filter_empty_list",
    )
)
QUIRKS: Final = _RECORD_QUIRKS | SERVER_QUIRKS
_BOOLEAN_FIELDS: Final = frozenset(
    (
        "enabledUser",
        "primary",
        "americanIndianOrAlaskaNative",
        "asian",
        "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander",
        "white",
        "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity",
    )
)
_OPTIONAL: Final = frozenset(
    (
        "middleName",
        "email",
        "sms",
        "userIds",
        "identifier",
        "classCode",
        "location",
        "periods",
        "grades",
        "subjects",
        "beginDate",
        "cityOfBirth",
        "preferredFirstName",
    )
)


def check_quirks(names: Iterable[str]) -> frozenset[str]:
    """Validate quirk names; ValueError naming the unknown ones."""
    chosen = frozenset(names)
    unknown = sorted(chosen - QUIRKS)
    if unknown:
        raise ValueError(f"unknown quirks {unknown}; known: {sorted(QUIRKS)}")
    return chosen


def apply(record: dict[str, Any], quirks: frozenset[str]) -> dict[str, Any]:
    """The wire form of ``record`` under ``quirks`` (the stored record is never changed)."""
    if not quirks & _RECORD_QUIRKS:
        return record
    out = dict(record)
    if "json_booleans" in quirks:
        for name in _BOOLEAN_FIELDS.intersection(out):
            if out[name] in ("true", "false"):
                out[name] = out[name] == "true"
    if "empty_roles" in quirks and "roles" in out:
        out["roles"] = []
    if "vendor_metadata" in quirks:
        out["metadata"] = {"vendor": {"syncBatch": 7, "sourceSystem": "sim-sis"}}
    stamp = out.get("dateLastModified")
    if isinstance(stamp, str):
        if "date_no_fraction" in quirks and "." in stamp:
            stamp = stamp.split(".", 1)[0] + "Z"
        if "date_space" in quirks:
            stamp = stamp.replace("T", " ", 1)
        out["dateLastModified"] = stamp
    if "inactive_status" in quirks and out.get("status") == "tobedeleted":
        out["status"] = "inactive"
    if "missing_optional" in quirks:
        for name in _OPTIONAL.intersection(out):
            del out[name]
    return out
