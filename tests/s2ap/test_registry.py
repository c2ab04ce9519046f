"""Registries: a taken name is refused, an unknown one lists the others, and a declared built-in
is known by name before its module (and torch) is imported, then loads on first use."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from s2ap.registry import Registry


@pytest.fixture
def toy_registry(tmp_path, monkeypatch) -> Iterator[Registry[str]]:
    """A registry, and a module ``toy_entries`` (not imported yet) that registers ``toy`` in it."""
    (tmp_path / "toy_holder.py").write_text(
        "from s2ap.registry import Registry\nREGISTRY = Registry('toy kind')\n"
    )
    (tmp_path / "toy_entries.py").write_text(
        "from toy_holder import REGISTRY\nREGISTRY.register('toy')('the toy entry')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_holder

    yield toy_holder.REGISTRY
    for name in ("toy_holder", "toy_entries"):
        sys.modules.pop(name, None)


def test_a_declared_entry_is_listed_then_imported_on_first_use(toy_registry) -> None:
    toy_registry.declare("toy", "toy_entries")
    assert toy_registry.names() == ["toy"]
    assert "toy_entries" not in sys.modules
    assert toy_registry.get("toy") == "the toy entry"
    assert "toy_entries" in sys.modules


def test_registering_a_declared_name_elsewhere_is_refused(toy_registry) -> None:
    registry = toy_registry
    registry.declare("toy", "toy_entries")
    with pytest.raises(ValueError, match="toy kind 'toy' is already registered"):
        registry.register("toy")("another entry")
    assert registry.get("toy") == "the toy entry"
    with pytest.raises(ValueError, match="already registered"):
        registry.declare("toy", "elsewhere")


def test_an_unknown_name_lists_the_known_ones() -> None:
    registry: Registry[int] = Registry("widget")
    registry.register("a")(1)
    registry.declare("b", "nowhere.module")
    with pytest.raises(ValueError, match="unknown widget 'c'; available widgets: a, b"):
        registry.get("c")


def test_the_declared_built_ins_are_exactly_the_registered_ones() -> None:
    """In a fresh interpreter: the names before the modules are imported, and after."""
    code = (
        "import sys\n"
        "from s2ap.architectures import list_models\n"
        "from s2ap.data.registry import list_sources, _SOURCES\n"
        "models, sources = list_models(), list_sources()\n"
        "assert 'torch' not in sys.modules\n"
        "import s2ap.models, s2ap.data.embedded, s2ap.data.torchvision_sources\n"
        "import s2ap.data.imagefolder\n"
        "from s2ap.architectures import _MODELS\n"
        "assert sorted(_MODELS._entries) == models, (sorted(_MODELS._entries), models)\n"
        "assert sorted(_SOURCES._entries) == sources, (sorted(_SOURCES._entries), sources)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
