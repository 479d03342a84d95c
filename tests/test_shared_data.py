"""The one way tests reach ../shared/data: skip naming the missing file on a user's clone, fail
where the data is required (CI), so a wrong path can never turn into a green run of skips."""
from __future__ import annotations

import pytest

from tests import conftest
from tests.conftest import REQUIRE_SHARED_ENV, SHARED_DATA, shared_path

MISSING = ("no-such-folder", "no-such-file.geojson")


def test_missing_file_is_a_skip_naming_it(monkeypatch):
    monkeypatch.delenv(REQUIRE_SHARED_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        shared_path(*MISSING)
    assert str(SHARED_DATA.joinpath(*MISSING)) in str(skipped.value)


def test_missing_file_fails_when_the_data_is_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_SHARED_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        shared_path(*MISSING)
    assert str(SHARED_DATA.joinpath(*MISSING)) in str(failed.value)


def test_ci_with_the_data_present_fails_instead_of_skipping(monkeypatch, tmp_path):
    monkeypatch.delenv(REQUIRE_SHARED_ENV, raising=False)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(conftest, "SHARED", tmp_path)  # ../shared present
    with pytest.raises(pytest.fail.Exception):
        shared_path(*MISSING)
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "absent")  # a user's clone in CI: skip
    with pytest.raises(pytest.skip.Exception):
        shared_path(*MISSING)


def test_present_file_is_returned(monkeypatch, tmp_path):
    monkeypatch.setenv(REQUIRE_SHARED_ENV, "1")
    monkeypatch.setattr(conftest, "SHARED", tmp_path)
    for folder in ("data", "vendor"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.csv").write_text("x\n", encoding="utf-8")
        assert shared_path("a.csv", folder=folder) == tmp_path / folder / "a.csv"


def test_the_real_data_is_where_the_tests_look():
    """In a workspace with ../shared, the helper's root is it (a moved folder must not skip quietly)."""
    data = shared_path()
    assert data == SHARED_DATA and any(data.iterdir())
