"""The package as it ships: a wheel carries the Avro schemas (``schemas/`` stays the source of
truth), and an installed copy loads them from inside itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from producer.avro import schema_dir

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a clean copy of what the build reads (an in-tree build
    would reuse a stale ``build/`` directory and write into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("producer", "schemas"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("oneroster_cdc-*.whl")
    return built


def test_the_wheel_carries_every_schema_byte_for_byte(wheel: Path) -> None:
    """Each ``schemas/**/*.avsc`` is in the wheel as ``producer/schemas/...`` unchanged, and
    the wheel holds no schema that ``schemas/`` lacks."""
    source = {p.relative_to(ROOT / "schemas").as_posix(): p for p in (ROOT / "schemas").rglob("*")}
    source = {name: path for name, path in source.items() if path.is_file()}
    with zipfile.ZipFile(wheel) as archive:
        packed = {
            n.removeprefix("producer/schemas/"): archive.read(n)
            for n in archive.namelist()
            if n.startswith("producer/schemas/")
        }
    assert source
    assert set(packed) == set(source)
    for name, path in source.items():
        assert packed[name] == path.read_bytes(), name


def test_an_installed_wheel_loads_its_own_schemas(wheel: Path, tmp_path: Path) -> None:
    """Unpacked away from the checkout, the package finds the schemas inside itself and loads
    them (what a non-editable install and the Docker image do)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    probe = (
        "import sys\n"
        # Only the unpacked wheel may provide `producer` (not the editable install's finder).
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
        f"sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
        "import producer.avro as avro\n"
        "print(avro.__file__)\n"
        "print(avro.SCHEMA_DIR)\n"
        "print(len(avro.Schemas.load().names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    site = tmp_path / "site" / "producer"
    assert Path(out[0]).parent == site
    assert Path(out[1]) == site / "schemas"
    assert int(out[2]) > 0


def test_a_checkout_reads_the_top_level_schemas(tmp_path: Path) -> None:
    """Without a packaged copy (a source checkout, an editable install), ``schema_dir`` is the
    repository's ``schemas/`` beside the package; with one, the packaged copy."""
    package = tmp_path / "producer"
    package.mkdir()
    assert schema_dir(package) == tmp_path / "schemas"
    (package / "schemas").mkdir()
    assert schema_dir(package) == package / "schemas"
