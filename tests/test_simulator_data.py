"""Simulator core: lazy deterministic data, overlay mutations, truth log, listings, filters."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from producer.simulator.data import Dataset
from producer.simulator.filters import QueryError, entity_fields, parse_filter, parse_timestamp
from producer.simulator.store import VIEWS, DistrictStore, SimClock, TruthLog

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_store(size: str | int = "small", version: str = "1.2", seed: int = 1) -> DistrictStore:
    clock = SimClock(START, frozen=True)
    data = Dataset("springfield", version=version, size=size, seed=seed, start=START)  # type: ignore[arg-type]
    return DistrictStore(data, clock, TruthLog())


def test_records_are_a_pure_function_of_seed_and_index():
    """The same seed gives identical records; another seed gives different names."""
    a, b, c = make_store(seed=1).data, make_store(seed=1).data, make_store(seed=2).data
    assert a.record("users", 42) == b.record("users", 42)
    assert a.record("enrollments", 999) == b.record("enrollments", 999)
    names_a = [a.record("users", i)["givenName"] for i in range(30)]
    names_c = [c.record("users", i)["givenName"] for i in range(30)]
    assert names_a != names_c


def test_small_district_has_realistic_proportions_and_valid_references():
    """Classes hold ~25 students, students take 6-7 classes, and every reference resolves."""
    store = make_store("small")
    data = store.data
    per_class: Counter[str] = Counter()
    per_student: Counter[str] = Counter()
    teachers_per_class: Counter[str] = Counter()
    pairs = set()
    user_ids = {r["sourcedId"] for r in store.iter_entity("users")}
    class_ids = {r["sourcedId"] for r in store.iter_entity("classes")}
    for rec in store.iter_entity("enrollments"):
        assert rec["user"]["sourcedId"] in user_ids
        assert rec["class"]["sourcedId"] in class_ids
        pairs.add((rec["user"]["sourcedId"], rec["class"]["sourcedId"]))
        if rec["role"] == "student":
            per_class[rec["class"]["sourcedId"]] += 1
            per_student[rec["user"]["sourcedId"]] += 1
        else:
            teachers_per_class[rec["class"]["sourcedId"]] += 1
    assert len(pairs) == data.count("enrollments")
    assert set(per_student.values()) == {6, 7}
    assert 6.3 <= sum(per_student.values()) / len(per_student) <= 6.7
    assert 20 <= sum(per_class.values()) / len(per_class) <= 26
    assert set(teachers_per_class.values()) == {1}
    assert len(teachers_per_class) == data.count("classes")
    org_ids = {r["sourcedId"] for r in store.iter_entity("orgs")}
    for user in store.iter_entity("users"):
        assert {r["org"]["sourcedId"] for r in user["roles"]} <= org_ids
        assert user["primaryOrg"]["sourcedId"] in org_ids
        for agent in user["agents"]:
            assert agent["sourcedId"] in user_ids
    demo = store.get("demographics", data.sourced_id("users", 3))
    assert demo is not None
    owner = store.get("users", demo["sourcedId"])
    assert owner is not None
    assert demo["sourcedId"] == owner["sourcedId"]


def test_large_district_starts_instantly_and_has_the_promised_size():
    """'large' means >= 300k users and >= 2M enrollments, built lazily in well under a second."""
    began = time.perf_counter()
    data = make_store("large").data
    assert time.perf_counter() - began < 1.0
    assert data.count("users") >= 300_000
    assert data.count("enrollments") >= 2_000_000
    last = data.record("enrollments", data.count("enrollments") - 1)
    assert last["role"] == "teacher"
    assert data.record("users", data.count("users") - 1)["roles"][0]["role"] == "guardian"


def test_sourced_id_order_is_index_order_and_base_dates_precede_start():
    """Zero-padded ids sort like their indices; base dateLastModified is before the start."""
    data = make_store("small").data
    ids = [data.sourced_id("users", i) for i in (0, 9, 10, 99, 100, 1000)]
    assert ids == sorted(ids)
    assert data.index_of("users", ids[3]) == 99
    assert data.index_of("users", "usr-12") is None
    stamps = [parse_timestamp(data.record("users", i)["dateLastModified"]) for i in range(200)]
    assert max(stamps) < START


def test_v11_users_carry_role_and_orgs_instead_of_roles():
    """1.1 districts serve ``role`` + ``orgs``; 1.2 districts ``roles[]`` + ``primaryOrg``."""
    v11 = make_store("tiny", version="1.1").data.record("users", 0)
    v12 = make_store("tiny", version="1.2").data.record("users", 0)
    assert v11["role"] == "student"
    assert v11["orgs"][0]["type"] == "org"
    assert "roles" not in v11
    assert "primaryOrg" not in v11
    assert v12["roles"][0]["role"] == "student"
    assert "role" not in v12


def test_mutations_are_stamped_with_the_clock_and_logged_as_truth():
    """Create, update, tobedeleted and hard delete each leave one truth entry in order."""
    store = make_store("tiny")
    store.clock.advance(60)
    created = store.create("users", {"givenName": "Newt"})
    updated = store.update("users", "usr-000000001", {"familyName": "Changed"})
    soft = store.mark_tobedeleted("users", "usr-000000002")
    store.hard_delete("users", "usr-000000003")
    ops = [(c.sourced_id, c.op, c.reason) for c in store.log.changes]
    assert ops == [
        (created["sourcedId"], "created", None),
        ("usr-000000001", "updated", None),
        ("usr-000000002", "deleted", "tobedeleted"),
        ("usr-000000003", "deleted", "hard"),
    ]
    assert [c.seq for c in store.log.changes] == [1, 2, 3, 4]
    assert updated["dateLastModified"] == "2026-03-01T12:01:00.000Z"
    assert soft["status"] == "tobedeleted"
    state = store.truth_state("users")
    assert created["sourcedId"] in state
    assert state["usr-000000001"]["familyName"] == "Changed"
    assert "usr-000000002" not in state
    assert "usr-000000003" not in state
    assert store.get("users", "usr-000000003") is None
    with pytest.raises(KeyError):
        store.update("users", "usr-000000003", {"familyName": "x"})


def test_fast_paging_matches_a_brute_force_listing_after_deletes_and_creates():
    """Offset pages (asc and desc) equal slices of the brute-force live list after mutations."""
    store = make_store("small")
    rng = random.Random(5)
    for index in rng.sample(range(store.data.count("users")), 40):
        store.hard_delete("users", store.data.sourced_id("users", index))
    for _ in range(7):
        store.create("users")
    for name in ("users", "students", "teachers"):
        view = VIEWS[name]
        expected = [r["sourcedId"] for r in store.iter_entity("users") if view.accepts(r)]
        for descending in (False, True):
            want = expected[::-1] if descending else expected
            sel = store.select(view, None, None, descending)
            assert sel.total == len(want)
            got = []
            for offset in range(0, sel.total, 37):
                got += [r["sourcedId"] for r in sel.page(offset, 37)]
            assert got == want


def test_delta_filter_past_the_base_is_answered_from_the_overlay():
    """``dateLastModified>`` after the start returns exactly the mutated records."""
    store = make_store("small")
    store.clock.advance(10)
    store.update("classes", "cls-000000005", {"title": "Renamed"})
    made = store.create("classes")
    allowed = entity_fields("classes", "1.2")
    flt = parse_filter("dateLastModified>'2026-03-01T12:00:00Z'", allowed)
    sel = store.select(VIEWS["classes"], flt, None, False)
    assert [r["sourcedId"] for r in sel.page(0, 100)] == ["cls-000000005", made["sourcedId"]]
    early = parse_filter("dateLastModified>'2020-01-01'", allowed)
    assert (
        store.select(VIEWS["classes"], early, None, False).total == store.data.count("classes") + 1
    )


def test_filter_grammar_predicates_logic_and_dotted_paths():
    """All seven predicates, AND/OR, doubled quotes and GUIDRef paths filter as documented."""
    record = {
        "sourcedId": "usr-1",
        "familyName": "O'Brien",
        "enabledUser": True,
        "dateLastModified": "2026-01-02 03:04:05Z",
        "roles": [{"role": "teacher", "org": {"sourcedId": "org-2"}}],
    }
    allowed = entity_fields("users", "1.2")

    def ok(text: str) -> bool:
        return parse_filter(text, allowed).matches(record)

    assert ok("familyName='O''Brien'")
    assert ok("familyName~'brie'")
    assert ok("familyName!='Smith'")
    assert ok("enabledUser='true'")
    assert ok("dateLastModified>'2026-01-02T03:04:04.999Z'")
    assert ok("dateLastModified>='2026-01-02'")
    assert not ok("dateLastModified<'2026-01-02'")
    assert ok("dateLastModified<='2026-01-02T03:04:05Z'")
    assert ok("roles.role='teacher' AND roles.org.sourcedId='org-2'")
    assert not ok("roles.role='student' AND familyName='O''Brien'")
    assert ok("roles.role='student' OR familyName='O''Brien'")
    for bad in ("nosuch='x'", "familyName='x", "familyName='x' XOR status='y'", "role='student'"):
        with pytest.raises(QueryError):
            parse_filter(bad, allowed)
    with pytest.raises(QueryError):
        parse_filter("dateLastModified>'yesterday'", allowed)


def test_lenient_timestamps():
    """Space or T, Z or offset, fraction or none, and plain dates all parse as UTC instants."""
    base = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_timestamp("2026-01-02T03:04:05Z") == base
    assert parse_timestamp("2026-01-02 03:04:05.000Z") == base
    assert parse_timestamp("2026-01-02T05:04:05+02:00") == base
    assert parse_timestamp("2026-01-02") == base - timedelta(hours=3, minutes=4, seconds=5)


def test_sorted_scan_orders_by_the_field_and_is_cached_per_revision():
    """``sort=familyName`` orders records; a mutation invalidates the cached order."""
    store = make_store("tiny")
    view = VIEWS["users"]
    sel = store.select(view, None, "familyName", False)
    names = [r["familyName"] for r in sel.page(0, 1000)]
    assert names == sorted(names)
    store.update("users", "usr-000000000", {"familyName": "Aaaa"})
    first = store.select(view, None, "familyName", False).page(0, 1)[0]
    assert first["sourcedId"] == "usr-000000000"


def test_recent_base_records_are_found_without_a_scan():
    """``Dataset.recent`` returns every base record newer than a threshold (no false misses)."""
    data = make_store("small").data
    stamps = {
        i: parse_timestamp(data.record("users", i)["dateLastModified"])
        for i in range(data.count("users"))
    }
    newest = max(stamps.values())
    for back in (0, 1, 3600, 86_400 * 3):
        after = newest - timedelta(seconds=back)
        truth = sorted(i for i, t in stamps.items() if t > after)
        found = data.recent("users", after)
        assert found is not None
        assert set(truth) <= set(found)
        assert len(found) <= len(truth) + 2
    large = make_store("large").data
    assert large.recent("users", START - timedelta(days=300)) is None  # most of it: scan
    assert data.recent("users", START) == []


def test_delta_filter_inside_the_base_range_matches_brute_force():
    """A delta threshold among base dates lists exactly the base and mutated records after it."""
    store = make_store("small")
    store.clock.advance(1)
    store.update("users", "usr-000000010", {"familyName": "Moved"})
    store.hard_delete("users", "usr-000000011")
    records = list(store.iter_entity("users"))
    newest_base = max(
        parse_timestamp(r["dateLastModified"]) for r in records if r["familyName"] != "Moved"
    )
    after = newest_base - timedelta(hours=12)
    stamp = after.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    want = [r["sourcedId"] for r in records if parse_timestamp(r["dateLastModified"]) > after]
    flt = parse_filter(f"dateLastModified>'{stamp}'", entity_fields("users", "1.2"))
    got = [r["sourcedId"] for r in store.select(VIEWS["users"], flt, None, False).page(0, 10_000)]
    assert got == want
    assert "usr-000000010" in got
    assert len(got) > 1


def test_create_may_reuse_a_created_users_id_for_its_demographics():
    """Demographics can be created under a created user's sourcedId; other ids are refused."""
    store = make_store("tiny")
    user = store.create("users")
    demo = store.create("demographics", {"sourcedId": user["sourcedId"], "sex": "other"})
    assert demo["sourcedId"] == user["sourcedId"]
    assert store.get("demographics", user["sourcedId"]) == demo
    for bad in ("usr-000000001", "custom-id", user["sourcedId"]):
        with pytest.raises(ValueError, match="cannot create"):
            store.create("demographics", {"sourcedId": bad})
    listed = store.select(VIEWS["demographics"], None, None, False).page(0, 1000)
    assert listed[-1]["sourcedId"] == user["sourcedId"]
