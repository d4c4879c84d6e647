"""Preset discovery through the ``dclip.presets`` entry-point group, and plugin isolation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dclip_cli.errors import DuplicatePresetError, PresetError, UnknownEditError, UnknownPresetError
from dclip_cli.presets import manager
from dclip_cli.presets.preset import Edit, Preset
from tests.support.plugins import PRESET_SOURCE, write_distribution


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for mod in [m for m in sys.modules if m.startswith("dclip_test_")]:
        del sys.modules[mod]


def test_builtin_presets_are_entry_point_plugins() -> None:
    registry = manager.load_registry()
    assert sorted(registry.presets) == ["bedroom", "church", "dog", "face"]
    by_name = {p.name: p for p in registry.plugins}
    assert {by_name[n].module for n in by_name} == {
        "dclip_face",
        "dclip_dog",
        "dclip_church",
        "dclip_bedroom",
    }
    assert all(p.distribution == "dclip" and p.error is None for p in registry.plugins)
    assert "register_aligners" in by_name["face"].hooks
    assert registry.warnings == []


def test_builtin_presets_hold_the_54_edits() -> None:
    registry = manager.load_registry()
    counts = {name: len(p.edits) for name, p in registry.presets.items()}
    assert counts == {"face": 28, "dog": 10, "church": 10, "bedroom": 6}
    face = registry.presets["face"]
    assert face.edit("grey_hair").trg == "person with grey hair"  # FIX 4
    assert face.edit("pixar").t0 == 601 and face.edit("pixar").checkpoint == "face/pixar"
    assert registry.checkpoints["face/pixar"].base == "celeba_hq"
    assert (
        registry.presets["dog"].arch == "adm" and registry.presets["dog"].arch_config["learn_sigma"] is True
    )
    assert registry.aligners["mtcnn-ffhq"].name == "mtcnn-ffhq"
    assert registry.identity_models["facenet-vggface2"].checkpoint == "facenet-vggface2"
    # every official fine-tuned checkpoint named by an edit is registered
    for preset in registry.presets.values():
        for edit in preset.edits.values():
            if edit.checkpoint:
                assert registry.checkpoints[edit.checkpoint].t0 == edit.t0


def test_third_party_preset_discovered_through_real_entry_point(site: Path, monkeypatch) -> None:
    write_distribution(
        site, "dclip-cats", "dclip_test_cats", PRESET_SOURCE.format(name="cat"), entry_name="cats"
    )
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,cats")
    registry = manager.load_registry()
    assert sorted(registry.presets) == ["cat", "face"]
    info = {p.name: p for p in registry.plugins}["cats"]
    assert (info.distribution, info.version, info.module) == ("dclip-cats", "0.1.0", "dclip_test_cats")
    assert registry.preset_owner["cat"] == "dclip-cats (cats)"
    assert registry.checkpoints["cat_base"].filename == "cat.ckpt"


def test_load_plugins_env_filters_and_empty_loads_none(monkeypatch) -> None:
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "church")
    assert sorted(manager.load_registry().presets) == ["church"]
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "")
    registry = manager.load_registry()
    assert registry.presets == {} and registry.plugins == []


@pytest.mark.parametrize(
    "source, cause",
    [
        ("raise ImportError('no module named torchaudio')\n", "ImportError: no module named torchaudio"),
        (
            "from dclip_cli.presets.hookspecs import hookimpl\n@hookimpl\ndef register_presetz(register):\n    pass\n",
            "register_presetz",
        ),
        (
            "from dclip_cli.presets.hookspecs import hookimpl\n@hookimpl\ndef register_presets(register):\n"
            "    register({'name': 'x'})\n",
            "registered a dict where a Preset was expected",
        ),
    ],
    ids=["import-error", "misspelt-hook", "wrong-record"],
)
def test_broken_plugin_is_isolated(site: Path, monkeypatch, source: str, cause: str) -> None:
    write_distribution(site, "dclip-broken", "dclip_test_broken", source, entry_name="broken")
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,broken")
    registry = manager.load_registry()
    assert sorted(registry.presets) == ["face"]
    assert len(registry.warnings) == 1
    assert registry.warnings[0].startswith("Preset plugin 'broken' failed to load: ")
    assert cause in registry.warnings[0]
    assert "DCLIP_DEBUG=1" in registry.warnings[0]


def test_broken_plugin_traceback_with_debug(site: Path, monkeypatch) -> None:
    write_distribution(site, "dclip-broken", "dclip_test_broken2", "1/0\n", entry_name="broken")
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "broken")
    monkeypatch.setenv("DCLIP_DEBUG", "1")
    warning = manager.load_registry().warnings[0]
    assert "ZeroDivisionError" in warning and "Traceback" in warning


def test_duplicate_preset_names_error_names_both(site: Path, monkeypatch) -> None:
    write_distribution(site, "dclip-faces-plus", "dclip_test_faces", PRESET_SOURCE.format(name="face"),
                       entry_name="faces2")  # fmt: skip
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,faces2")
    registry = manager.load_registry()
    with pytest.raises(DuplicatePresetError) as info:
        registry.preset("face")
    assert "dclip (face)" in str(info.value) and "dclip-faces-plus (faces2)" in str(info.value)


def test_unknown_preset_and_edit_errors() -> None:
    registry = manager.load_registry()
    with pytest.raises(UnknownPresetError) as info:
        registry.preset("cats")
    assert "No preset named 'cats'" in str(info.value)
    assert "bedroom, church, dog, face" in info.value.hint
    with pytest.raises(UnknownEditError) as einfo:
        registry.preset("church").edit("smiling")
    assert "church_gothic" in einfo.value.hint


def test_preset_validation_names_the_field() -> None:
    with pytest.raises(PresetError, match="t0 1200 must be between 1 and 999"):
        Preset(name="x", description="", image_size=32, checkpoint="c", arch="ddpm", arch_config={},
               source_text="s", domain_prompt="p", t0=1200)  # fmt: skip
    with pytest.raises(PresetError, match="edit registered as 'a' has key 'b'"):
        Preset(name="x", description="", image_size=32, checkpoint="c", arch="ddpm", arch_config={},
               source_text="s", domain_prompt="p", edits={"a": Edit(key="b", src="s", trg="t")})  # fmt: skip


def test_register_plugin_object_directly() -> None:
    import types

    from dclip_cli.presets.hookspecs import hookimpl

    mod = types.ModuleType("inline_plugin")

    @hookimpl
    def register_presets(register):
        register(Preset(name="inline", description="d", image_size=32, checkpoint="c", arch="ddpm",
                        arch_config={}, source_text="s", domain_prompt="p"))  # fmt: skip

    mod.register_presets = register_presets
    manager.register_plugin("inline", mod)
    try:
        assert "inline" in manager.get_registry().presets
    finally:
        manager.unregister_plugin("inline")
    assert "inline" not in manager.get_registry().presets
