"""Deterministic, lazily generated synthetic districts.

Every base record is a pure function of ``(seed, district id, entity, index)``: nothing is
materialised up front, so a district of 300k users and 2M enrollments starts in well under a
second and costs only a few per-school tables. SourcedIds are zero-padded (``usr-000000042``) so
that sourcedId order equals index order: ``sort=sourcedId`` and offset paging are index slices.

Layout (indices within an entity, which are also sourcedId order):

* orgs: ``0`` the district, ``1..S`` the schools.
* academicSessions: ``0`` the school year, ``1..2`` the terms, ``3..6`` the grading periods.
* courses: ``COURSES_PER_SCHOOL`` per school, school-major.
* classes: per school, six periods of ``ceil(n/25)`` sections and a seventh period that only
  the odd-numbered students of the school take, so students have 6 or 7 classes (mean 6.5).
* users: students, then teachers, then administrators, then one guardian per student.
* enrollments: student enrollments (school-major, 13 per pair of students), then one primary
  teacher enrollment per class.
* demographics: one per student, sharing the student's sourcedId.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from producer.model import Entity, Version
from producer.simulator.vocab import FAMILY, GIVEN, SCHOOL_KINDS, SUBJECTS

Size = Literal["tiny", "small", "medium", "large"]

#: Students per named size; any other size is given as an integer number of students.
SIZE_STUDENTS: Final[dict[str, int]] = {
    "tiny": 12,
    "small": 500,
    "medium": 25_000,
    "large": 310_000,
}
CLASS_SIZE: Final = 25
STUDENTS_PER_SCHOOL: Final = 600
CLASSES_PER_TEACHER: Final = 6
COURSES_PER_SCHOOL: Final = 14
ID_WIDTH: Final = 9

PREFIX: Final[dict[str, str]] = {
    "orgs": "org",
    "academicSessions": "as",
    "courses": "crs",
    "classes": "cls",
    "users": "usr",
    "enrollments": "enr",
    "demographics": "usr",
}
_ENTITY_CODE: Final[dict[str, int]] = {name: i + 1 for i, name in enumerate(PREFIX)}
_MASK: Final = (1 << 64) - 1

_AGE_SPAN_MS: Final = 400 * 86_400_000
_MIN_AGE_MS: Final = 1000
_AGE_PRIMES: Final = (2_654_435_761, 2_246_822_519, 3_266_489_917, 668_265_263, 374_761_393)
_MULTIPLIERS: Final = (7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67)


def students_for(size: str | int) -> int:
    """Number of students for a named size or an integer (``"large"`` -> 310 000)."""
    if isinstance(size, int):
        n = size
    elif size.isdigit():
        n = int(size)
    elif size in SIZE_STUDENTS:
        n = SIZE_STUDENTS[size]
    else:
        raise ValueError(f"unknown size {size!r}: use tiny, small, medium, large or a number")
    if n < 1:
        raise ValueError("a district needs at least one student")
    return n


def mix(value: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class _Draw:
    """A tiny deterministic stream of pseudo-random integers seeded by a hash."""

    __slots__ = ("_state",)

    def __init__(self, state: int) -> None:
        self._state = state

    def next(self, bound: int) -> int:
        self._state = mix(self._state)
        return self._state % bound


def format_ts(dt: datetime) -> str:
    """The canonical wire form of a timestamp: ``2026-01-02T03:04:05.678Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class _School:
    students: int
    sections: int  # sections per each of the six full periods
    last_sections: int  # sections of the seventh period (odd students only)
    multipliers: tuple[int, ...]

    @property
    def classes(self) -> int:
        return 6 * self.sections + self.last_sections

    @property
    def teachers(self) -> int:
        return max(1, math.ceil(self.classes / CLASSES_PER_TEACHER))

    @property
    def enrollments(self) -> int:
        return 6 * self.students + self.students // 2


def _plan_school(students: int) -> _School:
    sections = max(1, math.ceil(students / CLASS_SIZE))
    odd = students // 2
    last = math.ceil(odd / CLASS_SIZE) if odd else 0
    mults = tuple(m for m in _MULTIPLIERS if math.gcd(m, students) == 1)[:6]
    while len(mults) < 6:
        mults = (*mults, 1)
    return _School(students, sections, last, mults)


def _prefix_sums(values: list[int]) -> tuple[int, ...]:
    out = [0]
    for v in values:
        out.append(out[-1] + v)
    return tuple(out)


class Dataset:
    """The base (unmutated) records of one district, generated on demand.

    ``version`` decides the record shapes (1.1: ``user.role`` + ``orgs``; 1.2: ``roles[]`` and
    ``primaryOrg``). ``start`` is the simulator's start clock: every base ``dateLastModified``
    lies strictly before ``base_upper`` (= start), so later mutations always sort after them.
    """

    def __init__(
        self,
        district_id: str,
        *,
        version: Version,
        size: str | int,
        seed: int,
        start: datetime,
    ) -> None:
        self.district_id = district_id
        self.version: Version = version
        self.seed = seed
        self.start = start
        self.base_upper = start
        self._start_ms = int(start.timestamp() * 1000)
        self._salt = mix(seed) ^ mix(zlib.crc32(district_id.encode()))
        self._ages: dict[str, tuple[int, int, int, int]] = {}
        #: Prefix of every GUIDRef ``href``; the server sets it once it knows its address.
        self.href_root = f"https://{district_id}.sim.invalid"
        n = students_for(size)
        self.n_students = n
        n_schools = max(1, round(n / STUDENTS_PER_SCHOOL))
        cuts = [n * i // n_schools for i in range(n_schools + 1)]
        self.schools = tuple(_plan_school(cuts[i + 1] - cuts[i]) for i in range(n_schools))
        self.student_start = tuple(cuts)
        self.class_start = _prefix_sums([s.classes for s in self.schools])
        self.teacher_start = _prefix_sums([s.teachers for s in self.schools])
        self.enr_start = _prefix_sums([s.enrollments for s in self.schools])
        self.n_classes = self.class_start[-1]
        self.n_teachers = self.teacher_start[-1]
        self.n_admins = 1 + n_schools
        self.n_student_enrollments = self.enr_start[-1]
        end_year = start.year + 1 if start.month >= 8 else start.year
        self.school_year = end_year
        self._counts: dict[str, int] = {
            "orgs": 1 + n_schools,
            "academicSessions": 7,
            "courses": COURSES_PER_SCHOOL * n_schools,
            "classes": self.n_classes,
            "users": 2 * n + self.n_teachers + self.n_admins,
            "enrollments": self.n_student_enrollments + self.n_classes,
            "demographics": n,
        }

    # -- ids and ranges ---------------------------------------------------------------------
    def count(self, entity: Entity) -> int:
        """Number of base records of ``entity``."""
        return self._counts[entity]

    def counts(self) -> dict[str, int]:
        """Base record counts per entity."""
        return dict(self._counts)

    @staticmethod
    def sourced_id(entity: Entity, index: int) -> str:
        """The sourcedId of record ``index``: zero-padded so id order is index order."""
        return f"{PREFIX[entity]}-{index:0{ID_WIDTH}d}"

    @staticmethod
    def index_of(entity: Entity, sourced_id: str) -> int | None:
        """The index encoded in a generated sourcedId, or None for a foreign id."""
        prefix, _, digits = sourced_id.partition("-")
        if prefix != PREFIX[entity] or len(digits) != ID_WIDTH or not digits.isdigit():
            return None
        return int(digits)

    def user_ranges(self) -> dict[str, tuple[int, int]]:
        """Index ranges of users by role group (students, teachers, administrators, guardians)."""
        n, t, a = self.n_students, self.n_teachers, self.n_admins
        return {
            "students": (0, n),
            "teachers": (n, n + t),
            "administrators": (n + t, n + t + a),
            "guardians": (n + t + a, 2 * n + t + a),
        }

    # -- helpers ------------------------------------------------------------------------------
    def _draw(self, entity: str, index: int) -> _Draw:
        return _Draw(self._salt ^ (_ENTITY_CODE[entity] << 48) ^ index)

    def _age_plan(self, entity: str) -> tuple[int, int, int, int]:
        """(multiplier, shift, inverse multiplier, step in ms) of the entity's age permutation."""
        plan = self._ages.get(entity)
        if plan is None:
            n = self._counts[entity]
            mult = next(p for p in _AGE_PRIMES if math.gcd(p, n) == 1)
            shift = self._salt % n
            plan = (mult, shift, pow(mult, -1, n) if n > 1 else 0, max(1, _AGE_SPAN_MS // n))
            self._ages[entity] = plan
        return plan

    def _modified(self, entity: str, index: int, draw: _Draw) -> str:
        # Ages are an invertible permutation of the indices (rank k is k steps old, plus jitter
        # inside the step), spread over the 400 days before start and never at or after it.
        # ``recent`` inverts it, so delta listings need not scan the whole entity.
        mult, shift, _, step = self._age_plan(entity)
        rank = (index * mult + shift) % self._counts[entity]
        back = _MIN_AGE_MS + rank * step + draw.next(step)
        return format_ts(datetime.fromtimestamp((self._start_ms - back) / 1000, tz=UTC))

    def recent(self, entity: Entity, after: datetime) -> list[int] | None:
        """Sorted indices of base records that may be modified after ``after`` (a superset),
        or None when that is a large share of the entity (scan instead)."""
        n = self._counts[entity]
        _, shift, inverse, step = self._age_plan(entity)
        window = self._start_ms - _MIN_AGE_MS - int(after.timestamp() * 1000)
        if window <= 0:
            return []
        ranks = window // step + 1
        if ranks > max(1000, n // 8):
            return None
        return sorted(((k - shift) * inverse) % n for k in range(min(ranks, n)))

    @property
    def base_path(self) -> str:
        """OneRoster path of this district's version."""
        if self.version == "1.1":
            return "/ims/oneroster/v1p1"
        return "/ims/oneroster/rostering/v1p2"

    def ref(self, collection: str, sourced_id: str, kind: str) -> dict[str, str]:
        """A GUIDRef to ``sourced_id`` in ``collection``."""
        return {
            "href": f"{self.href_root}{self.base_path}/{collection}/{sourced_id}",
            "sourcedId": sourced_id,
            "type": kind,
        }

    def _school_of_student(self, i: int) -> int:
        return bisect_right(self.student_start, i) - 1

    def _school_ref(self, school: int) -> dict[str, str]:
        return self.ref("orgs", self.sourced_id("orgs", school + 1), "org")

    def _grades(self, school: int) -> tuple[str, ...]:
        return SCHOOL_KINDS[school % 3][1]

    # -- records ------------------------------------------------------------------------------
    def record(self, entity: Entity, index: int) -> dict[str, Any]:
        """Base record ``index`` of ``entity`` in this district's version shape."""
        if not 0 <= index < self._counts[entity]:
            raise IndexError(f"{entity} index {index} out of range")
        draw = self._draw(entity, index)
        rec: dict[str, Any] = {
            "sourcedId": self.sourced_id(entity, index),
            "status": "active",
            "dateLastModified": self._modified(entity, index, draw),
        }
        build = getattr(self, f"_build_{entity}")
        build(rec, index, draw)
        return rec

    def _build_orgs(self, rec: dict[str, Any], index: int, draw: _Draw) -> None:
        district = self.district_id.replace("-", " ").title()
        if index == 0:
            rec.update(
                name=f"{district} School District",
                type="district",
                identifier=f"{3_000_000 + zlib.crc32(self.district_id.encode()) % 999_999:07d}",
                children=[self._school_ref(s) for s in range(len(self.schools))],
            )
            return
        school = index - 1
        kind = SCHOOL_KINDS[school % 3][0]
        rec.update(
            name=f"{FAMILY[(school + draw.next(7)) % len(FAMILY)]} {kind} School {school + 1}",
            type="school",
            identifier=f"{self.district_id[:4].upper()}{school + 1:05d}",
            parent=self.ref("orgs", self.sourced_id("orgs", 0), "org"),
        )

    def _build_academicSessions(  # noqa: N802 - named after the OneRoster entity
        self, rec: dict[str, Any], index: int, draw: _Draw
    ) -> None:
        del draw
        y = self.school_year
        year_ref = self.ref(
            "academicSessions", self.sourced_id("academicSessions", 0), "academicSession"
        )
        spans = (
            (date(y - 1, 8, 15), date(y, 6, 15)),
            (date(y - 1, 8, 15), date(y - 1, 12, 20)),
            (date(y, 1, 6), date(y, 6, 15)),
            (date(y - 1, 8, 15), date(y - 1, 10, 17)),
            (date(y - 1, 10, 20), date(y - 1, 12, 20)),
            (date(y, 1, 6), date(y, 3, 20)),
            (date(y, 3, 23), date(y, 6, 15)),
        )
        begin, end = spans[index]
        rec.update(
            title=(f"{y - 1}-{y}", "Fall", "Spring", "Q1", "Q2", "Q3", "Q4")[index],
            startDate=begin.isoformat(),
            endDate=end.isoformat(),
            type="schoolYear" if index == 0 else "term" if index <= 2 else "gradingPeriod",
            schoolYear=str(y),
        )

        def session(i: int) -> dict[str, str]:
            return self.ref(
                "academicSessions", self.sourced_id("academicSessions", i), "academicSession"
            )

        if index == 0:
            rec["children"] = [session(1), session(2)]
        elif index <= 2:
            rec["parent"] = year_ref
            first = 3 + 2 * (index - 1)
            rec["children"] = [session(first), session(first + 1)]
        else:
            rec["parent"] = session(1 if index <= 4 else 2)

    def _build_courses(self, rec: dict[str, Any], index: int, draw: _Draw) -> None:
        del draw
        school, local = divmod(index, COURSES_PER_SCHOOL)
        grades = self._grades(school)
        subject = SUBJECTS[local % len(SUBJECTS)]
        grade = grades[local % len(grades)]
        rec.update(
            title=f"{subject} {grade}",
            courseCode=f"{subject[:3].upper()}-{grade}-{local:02d}",
            schoolYear=self.ref(
                "academicSessions", self.sourced_id("academicSessions", 0), "academicSession"
            ),
            grades=[grade],
            subjects=[subject],
            org=self._school_ref(school),
        )

    def class_position(self, index: int) -> tuple[int, int, int]:
        """(school, period 0..6, section) of class ``index``."""
        school = bisect_right(self.class_start, index) - 1
        local = index - self.class_start[school]
        plan = self.schools[school]
        if local < 6 * plan.sections:
            period, section = divmod(local, plan.sections)
        else:
            period, section = 6, local - 6 * plan.sections
        return school, period, section

    def _build_classes(self, rec: dict[str, Any], index: int, draw: _Draw) -> None:
        school, period, section = self.class_position(index)
        course = school * COURSES_PER_SCHOOL + (period * 2 + section % 2) % COURSES_PER_SCHOOL
        course_rec = self.record("courses", course)
        terms = [
            self.ref("academicSessions", self.sourced_id("academicSessions", t), "academicSession")
            for t in (1, 2)
        ]
        rec.update(
            title=f"{course_rec['title']} P{period + 1} S{section + 1}",
            classCode=f"{course_rec['courseCode']}-{period + 1}{section + 1:02d}",
            classType="homeroom" if period == 0 and section == 0 else "scheduled",
            location=f"Room {100 + draw.next(300)}",
            grades=course_rec["grades"],
            subjects=course_rec["subjects"],
            course=self.ref("courses", course_rec["sourcedId"], "course"),
            school=self._school_ref(school),
            terms=terms,
            periods=[str(period + 1)],
        )

    def _build_users(self, rec: dict[str, Any], index: int, draw: _Draw) -> None:
        ranges = self.user_ranges()
        given = GIVEN[draw.next(len(GIVEN))]
        family = FAMILY[draw.next(len(FAMILY))]
        agents: list[dict[str, str]] = []
        grades: list[str] = []
        if index < ranges["students"][1]:
            role, school = "student", self._school_of_student(index)
            org = self._school_ref(school)
            guardian = ranges["guardians"][0] + index
            agents.append(self.ref("users", self.sourced_id("users", guardian), "user"))
            local = index - self.student_start[school]
            g = self._grades(school)
            grades.append(g[local * len(g) // max(1, self.schools[school].students)])
            number = f"S{index + 100000}"
        elif index < ranges["teachers"][1]:
            role = "teacher"
            school = bisect_right(self.teacher_start, index - ranges["teachers"][0]) - 1
            org = self._school_ref(school)
            number = f"T{index}"
        elif index < ranges["administrators"][1]:
            local = index - ranges["administrators"][0]
            role = "districtAdministrator" if local == 0 else "siteAdministrator"
            org = (
                self.ref("orgs", self.sourced_id("orgs", 0), "org")
                if local == 0
                else self._school_ref(local - 1)
            )
            number = f"A{index}"
        else:
            role = "guardian"
            student = index - ranges["guardians"][0]
            org = self._school_ref(self._school_of_student(student))
            agents.append(self.ref("users", self.sourced_id("users", student), "user"))
            number = f"G{index}"
        username = f"{given}.{family}{index}".lower()
        rec.update(
            enabledUser="true",
            givenName=given,
            familyName=family,
            middleName=GIVEN[draw.next(len(GIVEN))][0],
            username=username,
            userIds=[{"type": "districtId", "identifier": number}],
            identifier=number,
            email=f"{username}@{self.district_id}.example.org",
            agents=agents,
            grades=grades,
        )
        if self.version == "1.1":
            rec["role"] = {"districtAdministrator": "administrator"}.get(
                role, "administrator" if role == "siteAdministrator" else role
            )
            rec["orgs"] = [org]
        else:
            rec["roles"] = [{"roleType": "primary", "role": role, "org": org}]
            rec["primaryOrg"] = org
            if draw.next(10) == 0:
                rec["preferredFirstName"] = given[:2] + given[:2].lower()
        rec["sms"] = f"+1555{index % 10_000_000:07d}" if role == "guardian" else ""
        if not rec["sms"]:
            del rec["sms"]

    def enrollment_position(self, index: int) -> tuple[int, int, str]:
        """(user index, class index, role) of enrollment ``index``."""
        if index >= self.n_student_enrollments:
            cls = index - self.n_student_enrollments
            school = bisect_right(self.class_start, cls) - 1
            plan = self.schools[school]
            teacher = self.teacher_start[school] + (cls - self.class_start[school]) % plan.teachers
            return self.n_students + teacher, cls, "teacher"
        school = bisect_right(self.enr_start, index) - 1
        plan = self.schools[school]
        block, rem = divmod(index - self.enr_start[school], 13)
        local, period = (2 * block, rem) if rem < 6 else (2 * block + 1, rem - 6)
        if period < 6:
            perm = (local * plan.multipliers[period] + period * 3) % plan.students
            cls = self.class_start[school] + period * plan.sections + perm // CLASS_SIZE
        else:
            section = (local // 2) // CLASS_SIZE
            cls = self.class_start[school] + 6 * plan.sections + section
        return self.student_start[school] + local, cls, "student"

    def _build_enrollments(self, rec: dict[str, Any], index: int, draw: _Draw) -> None:
        del draw
        user, cls, role = self.enrollment_position(index)
        school, _, _ = self.class_position(cls)
        rec.update(
            user=self.ref("users", self.sourced_id("users", user), "user"),
            role=role,
            school=self._school_ref(school),
            primary="true" if role == "teacher" else "false",
            beginDate=date(self.school_year - 1, 8, 15).isoformat(),
        )
        rec["class"] = self.ref("classes", self.sourced_id("classes", cls), "class")

    def _build_demographics(self, rec: dict[str, Any], index: int, draw: _Draw) -> None:
        school = self._school_of_student(index)
        grades = self._grades(school)
        age = 6 + _grade_number(grades[len(grades) // 2])
        born = date(self.school_year - age, 1, 1) + timedelta(days=draw.next(365))
        race = draw.next(6)
        flags = (
            "americanIndianOrAlaskaNative",
            "asian",
            "blackOrAfricanAmerican",
            "nativeHawaiianOrOtherPacificIslander",
            "white",
            "demographicRaceTwoOrMoreRaces",
        )
        rec.update(
            birthDate=born.isoformat(),
            # Mostly male/female; one in ten unspecified or other.
            sex=("male", "female", "unspecified", "other")[
                2 + draw.next(2) if draw.next(10) == 0 else draw.next(2)
            ],
            **{flag: "true" if i == race else "false" for i, flag in enumerate(flags)},
            hispanicOrLatinoEthnicity="true" if draw.next(4) == 0 else "false",
            countryOfBirthCode="US",
            stateOfBirthAbbreviation="CA",
            cityOfBirth="Springfield",
        )


def _grade_number(grade: str) -> int:
    return 0 if grade == "KG" else int(grade)
