"""One small plugin registry, shared by every axis a researcher extends: backbones, frame samplers, rewards,
tasks, training algorithms and annotation formats.

Example:
    >>> from vau.registry import Registry
    >>> COLORS = Registry("color")
    >>> @COLORS.register("red")
    ... def red():
    ...     "The colour red."
    ...     return (255, 0, 0)
    >>> COLORS.get("red")()
    (255, 0, 0)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vau.plugins"


class RegistryError(KeyError):
    """An unknown or duplicate registry name; the message says what to do."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


def _where(obj: Any) -> str:
    try:
        return f"{obj.__module__}.{obj.__qualname__} ({inspect.getsourcefile(obj)})"
    except (TypeError, AttributeError):
        return repr(obj)


def first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"


class Registry:
    """Maps names to builders (functions or classes) of one kind of plugin.

    Args:
        kind: what the entries are ("task", "algorithm", "backbone", "sampler", "reward"); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._instances: dict[str, tuple[Any, Any]] = {}  # name -> (entry, entry(name)), see instance()

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` under ``name``; a second definition of a name is an error."""

        def add(obj: Any) -> Any:
            if name in self._entries and self._entries[name] is not obj:
                raise RegistryError(
                    f"{self.kind} {name!r} is defined twice: first by {_where(self._entries[name])}, "
                    f"then by {_where(obj)}. Rename one of them."
                )
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        """The entry named ``name``; an unknown name fails listing the known ones.

        vau's built-in entries are imported on first need, so ``BACKBONES.get("qwen2_5_vl")`` works alone.
        """
        if name not in self._entries:
            load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names()) or '(none)'}. "
                f"A plugin defined outside vau/ must be listed in the config key `plugins` "
                f"or installed under the entry-point group {ENTRY_POINT_GROUP!r}."
            ) from None

    def instance(self, name: str) -> Any:
        """One shared instance of the entry ``name``, built as ``entry(name)`` on first use (tasks are stateless
        objects asked per sample: building one per call would be waste). Re-registering a name (``temporary``)
        builds a new one."""
        entry = self.get(name)
        cached = self._instances.get(name)
        if cached is None or cached[0] is not entry:
            cached = self._instances[name] = (entry, entry(name))
        return cached[1]

    @contextmanager
    def temporary(self) -> Iterator[Registry]:
        """Entries registered inside the ``with`` block are removed when it exits (tests, notebooks)."""
        before = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(before)

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Any]]:
        return [(n, self._entries[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


BACKBONES = Registry("backbone")
SAMPLERS = Registry("sampler")
REWARDS = Registry("reward")
TASKS = Registry("task")
ALGORITHMS = Registry("algorithm")
REFLECTORS = Registry("reflection builder")  # builders of SRVAU-R1 reflection chains (`python -m vau data reflect`)
ROLLOUT_ENGINES = Registry("rollout engine")  # what generates completions (vau.rollout; module.generation.engine)
READERS = Registry("annotation format")  # path -> list[Annotation] (vau.data.readers.read_rows, config data.format)
ALL = {"task": TASKS, "algorithm": ALGORITHMS, "backbone": BACKBONES, "sampler": SAMPLERS, "reward": REWARDS,
       "reflection builder": REFLECTORS, "annotation format": READERS, "rollout engine": ROLLOUT_ENGINES}


class PluginImportError(ImportError):
    pass


_BUILTINS_LOADED = False
# vau's own plugin modules: importing each registers its entries.
BUILTIN_MODULES = ("vau.data.readers", "vau.data.frame_annotations", "vau.data.caption_annotations", "vau.tasks", "vau.modules.sft", "vau.modules.grpo", "vau.backbones.base", "vau.backbones.qwen", "vau.rollout.hf",
                   "vau.datamodules.samplers", "vau.rewards", "vau.rewards.reflection", "vau.datatools.reflection",
                   "vau.datatools.teacher")


def load_builtins() -> None:
    """Import vau's own plugin modules so their entries are registered (once)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def load_plugins(modules: Iterable[str] = (), use_entry_points: bool = True) -> list[str]:
    """Import built-ins, the modules named in config ``plugins`` and the ``vau.plugins`` entry points.

    A plugin that fails to import fails the run that asked for it, with its module named.

    Returns:
        The names of the plugin modules imported (config list first, then entry points).
    """
    load_builtins()
    loaded: list[str] = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # any failure inside a plugin: name it
            raise PluginImportError(
                f"plugin module {module!r} (from config key `plugins`) failed to import: "
                f"{type(err).__name__}: {err}"
            ) from err
        loaded.append(module)
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as err:
                raise PluginImportError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) failed to "
                    f"import: {type(err).__name__}: {err}. Uninstall it or fix it."
                ) from err
            loaded.append(ep.value)
    return loaded
