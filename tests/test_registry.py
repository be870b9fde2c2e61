import subprocess
import sys
import textwrap

import pytest

from vau.registry import ALL, PluginImportError, Registry, RegistryError, load_plugins


def test_register_get_names():
    reg = Registry("thing")

    @reg.register("b")
    def b():
        """The b thing."""

    @reg.register("a")
    class A:
        pass

    assert reg.get("b") is b and reg.get("a") is A
    assert reg.names() == ["a", "b"]
    assert "a" in reg and len(reg) == 2


def test_duplicate_name_is_refused_naming_both_definitions():
    reg = Registry("reward")

    @reg.register("acc")
    def first(): ...

    with pytest.raises(RegistryError) as err:

        @reg.register("acc")
        def second(): ...

    assert "first" in str(err.value) and "second" in str(err.value)


def test_unknown_name_suggests_close_match_and_lists_known():
    reg = Registry("sampler")
    reg.register("uniform")(lambda: None)
    reg.register("random_segment")(lambda: None)
    with pytest.raises(RegistryError) as err:
        reg.get("unifrom")
    assert "Did you mean 'uniform'" in str(err.value)
    assert "random_segment" in str(err.value)


def test_builtins_register_every_kind():
    load_plugins([])
    assert {"tiny_qwen2_5_vl", "qwen2_5_vl", "qwen2_vl", "qwen3_vl"} <= set(ALL["backbone"].names())
    assert {"uniform", "fps", "random_segment"} <= set(ALL["sampler"].names())


def test_config_plugin_is_imported_and_a_broken_one_names_its_module(tmp_path, monkeypatch):
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent("""
        from vau.registry import REWARDS

        @REWARDS.register("always_half")
        def always_half(completions, samples, **ctx):
            "Scores 0.5 for every completion."
            return [0.5 for _ in completions]
    """))
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins(["good_plugin"], use_entry_points=False) == ["good_plugin"]
    assert "always_half" in ALL["reward"]
    with pytest.raises(PluginImportError, match="broken_plugin.*boom at import"):
        load_plugins(["broken_plugin"], use_entry_points=False)


def test_entry_point_plugin_is_loaded(tmp_path):
    # A real installed-distribution layout on sys.path: package + dist-info with an entry_points.txt.
    (tmp_path / "ep_plugin_pkg").mkdir()
    (tmp_path / "ep_plugin_pkg" / "__init__.py").write_text(textwrap.dedent("""
        from vau.registry import SAMPLERS

        @SAMPLERS.register("every_other")
        class EveryOther:
            "Every second frame."
    """))
    dist = tmp_path / "ep_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vau.plugins]\nevery_other = ep_plugin_pkg\n")
    code = "from vau.registry import load_plugins, SAMPLERS; load_plugins([]); print(SAMPLERS.names())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": ""}, check=True)
    assert "every_other" in out.stdout
