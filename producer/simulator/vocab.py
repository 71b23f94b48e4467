"""Vocabulary of the synthetic districts: names, subjects and school kinds (all made up)."""

from __future__ import annotations

from typing import Final

GIVEN: Final[tuple[str, ...]] = (
    "Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun",
    "Kai", "Lena", "Milo", "Nia", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara",
    "Uma", "Vic", "Wren", "Xavi", "Yara", "Zed", "Aria", "Bo", "Cy", "Dina",
    "Emil", "Fern", "Gio", "Hugo", "Iris", "Jade", "Kofi", "Lux", "Mae", "Noor",
)  # fmt: skip
FAMILY: Final[tuple[str, ...]] = (
    "Abara", "Brook", "Castillo", "Dune", "Eklund", "Farrow", "Gale", "Holm",
    "Ivers", "Jaspers", "Kova", "Lindqvist", "Mbeki", "Nakamura", "Okafor", "Pryce",
    "Quist", "Rahman", "Sato", "Thorne", "Ueda", "Varga", "Whitlow", "Xu",
    "Yilmaz", "Zorn", "Achebe", "Bellamy", "Crane", "Duarte", "Engel", "Fonseca",
)  # fmt: skip
SUBJECTS: Final[tuple[str, ...]] = (
    "Mathematics", "English", "Science", "History",
    "Art", "Music", "Physical Education",
)  # fmt: skip
#: (kind, grades) by school number modulo 3.
SCHOOL_KINDS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("Elementary", ("KG", "01", "02", "03", "04", "05")),
    ("Middle", ("06", "07", "08")),
    ("High", ("09", "10", "11", "12")),
)
