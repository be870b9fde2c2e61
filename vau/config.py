"""Hydra composition for the CLI and tests: ``conf=NAME`` (or a YAML path) plus overrides -> one DictConfig."""

from __future__ import annotations

import difflib
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vau.schema import register

# A wheel or a non-editable install carries the configs as package data (vau/conf, see setup.py); a source
# checkout (editable install, or running from the repository) reads the top-level conf/ folder.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if (_PACKAGED_CONF / "config.yaml").is_file() else Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("backbone", "data", "sampler", "module", "reward", "trainer", "experiment")


class ConfigError(ValueError):
    """A config name, key or value the user gave that does not exist; the message lists valid choices."""


def split_args(argv, own: Sequence[str] | None = None, prefixes: Sequence[str] = (),
               take_conf: bool = True) -> tuple[str | None, dict[str, str], list[str]]:
    """The one ``KEY=VALUE`` parser of every stage: ``(conf, own, rest)``.

    ``conf=NAME|PATH`` is taken out (``take_conf``); an argument whose key is in ``own`` (every key when ``own`` is
    None) or starts with one of ``prefixes`` is the stage's own (a later key wins); the rest stays in order (config
    overrides, or what :func:`key_values` refuses).

    >>> split_args(["conf=demo", "out=a.csv", "trainer.max_steps=3", "video_roots.ucf=/v"], own=["out"],
    ...            prefixes=["video_roots."])
    ('demo', {'out': 'a.csv', 'video_roots.ucf': '/v'}, ['trainer.max_steps=3'])
    """
    conf, mine, rest = None, {}, []
    for arg in argv:
        key, sep, value = str(arg).partition("=")
        if sep and take_conf and key == "conf":
            conf = value
        elif sep and (own is None or key in own or key.startswith(tuple(prefixes))):
            mine[key] = value
        else:
            rest.append(arg)
    return conf, mine, rest


def key_values(argv, known: Sequence[str] | None = None, error: type[Exception] = ConfigError,
               usage: str = "", prefixes: Sequence[str] = (), required: Sequence[str] = ()) -> dict[str, str]:
    """``KEY=VALUE`` arguments of a stage that takes nothing else, as a dict (a later key wins); ``error`` names the
    first argument that is not KEY=VALUE or (with ``known`` / ``prefixes``) not a known key, then the ``required``
    keys that are missing or empty.

    >>> key_values(["out=a.csv", "seed=3"])
    {'out': 'a.csv', 'seed': '3'}
    >>> key_values(["out=a.csv", "judge.model=m"], known=["out", "in"], prefixes=["judge."], required=["in"])
    Traceback (most recent call last):
    ...
    vau.config.ConfigError: missing in=FILE
    """
    own = None if known is None else list(known)
    _, args, rest = split_args(argv, own=own, prefixes=prefixes, take_conf=False)
    tail = f"\n{usage}" if usage else ""
    if rest:
        arg = str(rest[0])
        if "=" not in arg:
            message = f"{arg!r} is not KEY=VALUE"
        else:
            takes = [k + "=" for k in known or ()] + [p + "*" for p in prefixes]
            message = f"unknown argument {arg!r}" + (f"; it takes {', '.join(takes)}" if known is not None else "")
        raise error(message + tail)
    missing = [key for key in required if not args.get(key)]
    if missing:
        raise error(f"missing {' and '.join(key + '=FILE' for key in missing)}{tail}")
    return args


def conf_dir() -> Path:
    if not (CONF_DIR / "config.yaml").is_file():
        raise ConfigError(f"vau's config folder {CONF_DIR} is missing; reinstall vau (pip install .)")
    return CONF_DIR


def choices(group: str) -> list[str]:
    # Files named _* are shared bases that other files of the group extend, not choices of their own.
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


def flag(value, key: str, error: type[Exception] = ConfigError) -> bool:
    """A command's own true/false argument (``overwrite=true``); anything else fails naming ``key``.

    >>> flag("Yes", "overwrite"), flag("0", "merge")
    (True, False)
    """
    low = str(value).strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise error(f"{key}={value!r}: use true or false")


def _unknown(kind: str, name: str, known: list[str], extra: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}.{hint} Valid choices: {', '.join(known)}.{extra}")


def _quoted(text: str) -> str:
    """``text`` as a quoted string of Hydra's override grammar (a folder name may hold spaces, commas or quotes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose(conf: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the root config with experiment ``conf`` (a name in conf/experiment or a YAML path) and overrides.

    Example:
        >>> cfg = compose("demo", ["trainer.max_steps=2", "data.batch_size=2"])
        >>> cfg.experiment_name, cfg.trainer.max_steps, cfg.data.batch_size, cfg.module.name
        ('demo', 2, 2, 'sft')
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    register()  # the typed nodes (data, trainer, module.grpo, module.generation) the YAML files build on

    overrides = list(overrides)
    tmp = None
    if conf is not None:
        path = Path(conf)
        if conf.endswith((".yaml", ".yml")) or path.is_file():
            if not path.is_file():
                raise ConfigError(f"conf={conf}: no such YAML file")
            user = _read_user_yaml(path)
            # A YAML file outside conf/ acts as an experiment: stage it in a search-path folder of its own.
            tmp = Path(tempfile.mkdtemp(prefix="vau-conf-"))
            (tmp / "experiment").mkdir()
            shutil.copy(path, tmp / "experiment" / "user_conf.yaml")
            # The same file with only its defaults list: the keys the file may set (checked after composing).
            (tmp / "experiment" / "user_conf_defaults.yaml").write_text(
                "# @package _global_\n" + OmegaConf.to_yaml({"defaults": user.get("defaults") or ["_self_"]}))
            # Config-group folders beside the file (e.g. backbone/NAME.yaml of a plugin backbone) add choices to
            # the built-in groups.
            search = ",".join(_quoted(f"file://{folder}") for folder in (tmp, path.resolve().parent))
            overrides = [f"hydra.searchpath=[{search}]", "experiment=user_conf", *overrides]
        elif conf not in choices("experiment"):
            raise _unknown("conf", conf, choices("experiment"), " Or pass a path to a YAML file.")
        else:
            overrides = [f"experiment={conf}", *overrides]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="vau"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
            if tmp is not None:
                base = hydra_compose(config_name="config", overrides=[
                    "experiment=user_conf_defaults" if o == "experiment=user_conf" else o for o in overrides
                    if _override_key(o) is None])
                _check_file_keys(Path(conf), user, base)
            _check_value_types(cfg, overrides)
    except MissingConfigException as err:
        group = next((g for g in GROUPS if re.search(rf"\b{g}\b", str(err))), None)
        if group:
            bad = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith(f"{group}=")), "?")
            raise _unknown(f"{group} config", bad, choices(group)) from None
        raise ConfigError(str(err)) from None
    except ConfigCompositionException as err:
        message = _explain(err, overrides)
        if tmp is not None and "experiment/user_conf" in str(err):  # the user's file, not its staged copy
            message = f"{conf}: " + message.replace("In 'experiment/user_conf': ", "")
        raise ConfigError(message) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return cfg


# Nodes whose keys are open by design: reward names (any registered reward), per-source folders, mix weights, the
# reflection builder's options.
OPEN_NODES = ("reward", "data.video_roots", "data.mix.weights", "data.reflect", "hydra")


def _read_user_yaml(path: Path) -> dict:
    """The user's experiment file as a dict; a YAML error names the file and line (not Hydra's staged copy)."""
    import yaml

    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"conf={path}: not valid YAML at {where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"conf={path}: cannot read it ({err})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"conf={path}: expected a mapping of config keys (`# @package _global_` then key: value "
                          f"lines), found a {type(value).__name__}")
    return value


def _leaf_keys(node, prefix: str = ""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, f"{path}.")
        else:
            yield path


def _unknown_key(parent: str, leaf: str, known: list[str]) -> str:
    """"unknown config key 'a.b'. Did you mean a.c? Keys under 'a': ..." (the command line and config files)."""
    key = f"{parent}.{leaf}" if parent else leaf
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" Did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    where = f"under {parent!r}" if parent else "at the top level"
    return f"unknown config key {key!r}.{hint} Keys {where}: {', '.join(known)}"


def _check_file_keys(path: Path, user: dict, base: DictConfig) -> None:
    """Every key the user's file sets must exist in the config it is composed onto, as on the command line: a typo
    (``seedd: 5``, ``trainer.max_stepz``) fails naming the file, the key and the closest known key. Below a key whose
    default is not a mapping (e.g. ``data.generate: null``) the file may write any mapping."""
    for key in _leaf_keys({k: v for k, v in user.items() if k != "defaults"}):
        if key in OPEN_NODES or key.startswith(tuple(f"{n}." for n in OPEN_NODES)):
            continue
        node, walked = base, []
        for part in key.split("."):
            if not isinstance(node, DictConfig):
                break
            if part not in node:
                known = sorted(str(k) for k in node.keys())
                raise ConfigError(f"conf={path}: {_unknown_key('.'.join(walked), part, known)}")
            child = node._get_node(part)  # the node itself: no interpolation is resolved here
            node = child if isinstance(child, DictConfig) and not child._is_none() else None
            walked.append(part)


_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number"}


def _override_key(override: str) -> str | None:
    """The config key a ``key=value`` override sets, or None for group choices, additions, deletions, hydra.*."""
    if "=" not in override or override.startswith(("+", "~")):
        return None
    key = override.split("=", 1)[0]
    if key.startswith("hydra.") or ("." not in key and (key in GROUPS or "/" in key)) or "/" in key:
        return None
    return key


def _check_value_types(cfg: DictConfig, overrides: list[str]) -> None:
    """Each ``key=value`` override must have the type of the default it replaces (bool, int, float; an int is a
    fine float; null is always allowed; string defaults take anything). Otherwise a ConfigError names the key,
    the expected type and the value, instead of a traceback from deep inside the run."""
    from hydra import compose as hydra_compose

    checked = [(o, k) for o in overrides if (k := _override_key(o)) is not None]
    if not checked:
        return
    # The defaults the overrides replace: the same composition with only group choices and additions applied.
    base = hydra_compose(config_name="config", overrides=[o for o in overrides if _override_key(o) is None])
    for override, key in checked:
        try:
            default = OmegaConf.select(base, key, throw_on_missing=False)
            given = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an interpolation that does not resolve here: not this check's business
            continue
        expected = type(default)
        if default is None or given is None or expected not in _TYPE_NAMES:
            continue
        ok = (isinstance(given, bool) if expected is bool
              else isinstance(given, int) and not isinstance(given, bool) if expected is int
              else isinstance(given, (int, float)) and not isinstance(given, bool))
        if not ok:
            value = override.split("=", 1)[1]
            shown = str(default).lower() if isinstance(default, bool) else repr(default)
            raise ConfigError(f"config key {key!r} expects {_TYPE_NAMES[expected]} (default {shown}), got {value!r} "
                              f"({type(given).__name__}); e.g. {key}={shown}")


def _wrong_type(text: str) -> str | None:
    """A typed node's refusal (vau.schema; OmegaConf: "Value 'abc' ... could not be converted to Integer ...
    full_key: trainer.max_steps") in the words of :func:`_check_value_types`, or None for any other error."""
    value = re.search(r"Value '([^']*)'", text)
    key = re.search(r"full_key: (\S+)", text)
    kind = re.search(r"(?:converted to|a valid) (Integer|Float|bool)", text)
    if not (value and key and kind):
        return None
    expected = {"Integer": int, "Float": float, "bool": bool}[kind.group(1)]
    return (f"config key {key.group(1)!r} expects {_TYPE_NAMES[expected]}, got {value.group(1)!r}; "
            f"the typed nodes and their defaults are in vau/schema.py")


def _explain(err: Exception, overrides: list[str]) -> str:
    text = str(err)
    cause = getattr(err, "__cause__", None)
    typed = _wrong_type(f"{text}\n{cause or ''}")
    if typed:
        return typed
    # A dict value for an existing node names the new key it brings only in the cause (backbone.sizes={a: 1}).
    match = (re.search(r"is not in struct\s+full_key: (\S+)", str(cause or ""))
             or re.search(r"Could not override '([^']+)'", text)
             or re.search(r"not in '\w+'\s+full_key: (\S+)", text)  # a typed node (vau.schema) names the full key
             or re.search(r"Key '([^']+)'", text))
    if match:
        key = match.group(1)
        parent, _, leaf = key.rpartition(".")
        try:
            base = compose(None, [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(key)
                                  and o != "experiment=user_conf"])
            node = OmegaConf.select(base, parent) if parent else base
            known = sorted(node.keys()) if isinstance(node, DictConfig) else []
        except Exception:
            known = []
        return f"{_unknown_key(parent, leaf, known)}. To add a new key on purpose, write +{key}=VALUE."
    return f"{text}{': ' + str(cause) if cause else ''}"
