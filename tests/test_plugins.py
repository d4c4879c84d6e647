"""Preset discovery through the ``dclip.presets`` entry-point group, and plugin isolation."""

from __future__ import annotations

import sys
from importlib import metadata
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


def test_duplicate_third_party_preset_names_error_names_both(site: Path, monkeypatch) -> None:
    write_distribution(site, "dclip-cats-a", "dclip_test_cats_a", PRESET_SOURCE.format(name="cat"),
                       entry_name="cats_a")  # fmt: skip
    write_distribution(site, "dclip-cats-b", "dclip_test_cats_b", PRESET_SOURCE.format(name="cat"),
                       entry_name="cats_b")  # fmt: skip
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "cats_a,cats_b")
    eps = list(metadata.entry_points(group=manager.ENTRY_POINT_GROUP))
    for order in (eps, eps[::-1]):
        registry = manager.load_registry(order)
        with pytest.raises(DuplicatePresetError) as info:
            registry.preset("cat")
        assert "dclip-cats-a (cats_a) and dclip-cats-b (cats_b)" in str(info.value)


# A third-party plugin taking the names, aliases and cache files of first-party registrations (issue 11, point 4).
SHADOW_SOURCE = """
from dclip_cli.plugin import CheckpointSpec, Preset, hookimpl


@hookimpl
def register_presets(register):
    register(Preset(name="face", description="not the real face", image_size=32, checkpoint="celeba_hq",
                    arch="ddpm", arch_config={}, source_text="face", domain_prompt="a face"))


@hookimpl
def register_checkpoints(register):
    register(CheckpointSpec(name="celeba_hq", filename="celeba_hq.ckpt", urls=("http://evil.example/c.ckpt",)))
    register(CheckpointSpec(name="clip-vit-b-16", filename="ViT-B-16.pt", urls=("http://evil.example/v.pt",)))
    register(CheckpointSpec(name="my-clip", filename="my.pt", aliases=("ViT-B/16",)))
    register(CheckpointSpec(name="sneaky", filename="celeba_hq.ckpt", urls=("http://evil.example/s.ckpt",)))
    register(CheckpointSpec(name="mine", filename="mine.ckpt", urls=("http://example.org/mine.ckpt",)))
"""


def test_first_party_names_win_whatever_the_load_order(site: Path, monkeypatch) -> None:
    """Issue 11, point 4: the built-in registration keeps its name, each clash is one warning naming both
    distributions, and no plugin can change the URLs or hashes of a built-in checkpoint."""
    from dclip_cli.store import get_spec

    write_distribution(site, "dclip-evil", "dclip_test_evil", SHADOW_SOURCE, entry_name="evil")
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,evil")
    eps = list(metadata.entry_points(group=manager.ENTRY_POINT_GROUP))
    assert [ep.name for ep in eps if ep.name in ("face", "evil")]
    results = []
    for order in (eps, eps[::-1]):
        registry = manager.load_registry(order)
        face_urls = registry.checkpoints["celeba_hq"].urls
        results.append((registry.preset_owner["face"], face_urls, sorted(registry.warnings)))
        assert registry.preset("face").description.startswith("Human faces")
        assert all("evil.example" not in str(u) for u in face_urls)
        assert "clip-vit-b-16" not in registry.checkpoints and "sneaky" not in registry.checkpoints
        assert "my-clip" not in registry.checkpoints and registry.checkpoints["mine"].filename == "mine.ckpt"
    assert results[0] == results[1]  # the same outcome in both orders
    warnings = results[0][2]
    assert len(warnings) == 5, warnings
    for text in ("preset 'face'", "checkpoint 'celeba_hq'", "checkpoint 'clip-vit-b-16'", "checkpoint 'ViT-B/16'",
                 "checkpoint 'sneaky'"):  # fmt: skip
        (line,) = [w for w in warnings if text in w]
        assert line.startswith("dclip-evil (evil) registers ") and "dclip (" in line and "is ignored" in line
    # through the store, with the process-wide registry
    manager.reset_registry()
    spec = get_spec("celeba_hq")
    assert spec.urls[0].startswith("https://huggingface.co/gwang-kim/")
    assert get_spec("ViT-B/16").sha256 == "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def test_plugin_calling_sys_exit_is_a_broken_plugin(site: Path, monkeypatch) -> None:
    """Issue 11, point 5: ``sys.exit()`` at import (or in a hook) is one warning, not a silent exit 3."""
    import os
    import subprocess

    write_distribution(
        site, "dclip-quits", "dclip_test_quits", "import sys\nsys.exit(3)\n", entry_name="quits"
    )
    hook = "from dclip_cli.plugin import hookimpl\n@hookimpl\ndef register_presets(register):\n    raise SystemExit(4)\n"
    write_distribution(site, "dclip-quits-later", "dclip_test_quits_later", hook, entry_name="quits_later")
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,quits,quits_later")
    registry = manager.load_registry()
    assert sorted(registry.presets) == ["face"]
    assert [w.split(":")[0] for w in registry.warnings] == [
        "Preset plugin 'quits' failed to load",
        "Preset plugin 'quits_later' failed to load",
    ]
    assert "SystemExit: 3" in registry.warnings[0] and "SystemExit: 4" in registry.warnings[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "dclip_cli", "presets", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "face" in result.stdout and "Preset plugin 'quits' failed to load: SystemExit: 3" in result.stderr


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
