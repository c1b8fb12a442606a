"""Where model copies and locks go: the user's cache home, so CI's empty cache home is what memdistill sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from memdistill.core.models import cache_root


def test_cache_root_follows_memdistill_cache_then_xdg_cache_home_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEMDISTILL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "memdistill"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "memdistill"
    monkeypatch.setenv("MEMDISTILL_CACHE", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
