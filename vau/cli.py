"""``python -m vau <stage> [conf=NAME] [overrides...]``."""

from __future__ import annotations

import difflib
import logging
import sys

from vau.config import GROUPS, ConfigError, choices, compose

STAGES = {
    "fit": "train (SFT or GRPO, per module=...), then evaluate on the test split",
    "validate": "evaluate on the val split (ckpt_path=PATH|last to load weights)",
    "test": "evaluate on the test split and write predictions (ckpt_path=PATH|last)",
    "list": "print every registered backbone, frame sampler and reward",
    "score": "score a predictions file against annotations: annotations=FILE predictions=FILE [task=qa|tag|cls]",
    "data": "data tools: `data generate` writes the demo mini-benchmark of the chosen config",
}


def usage() -> str:
    lines = [
        "usage: python -m vau <stage> [conf=NAME|PATH.yaml] [key=value ...]",
        "",
        "Stages:",
        *[f"  {name:<9} {doc}" for name, doc in STAGES.items()],
        "",
        "Config groups (choose with GROUP=NAME, e.g. backbone=qwen2_5_vl; conf=NAME picks an experiment):",
        *[f"  {g:<11} {', '.join(choices(g))}" for g in GROUPS],
        "",
        "Any key can be overridden: trainer.max_steps=10 data.batch_size=2 backbone.path=/models/X.",
        "With no arguments after the stage, `fit` runs the built-in demo (tiny model, generated data, CPU).",
    ]
    return "\n".join(lines)


def _split(argv: list[str]) -> tuple[str | None, list[str]]:
    conf = None
    rest = []
    for arg in argv:
        if arg.startswith("conf="):
            conf = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return conf, rest


def print_registries() -> None:
    from vau.registry import ALL, first_doc_line

    for kind, registry in ALL.items():
        print(f"{kind}s:")
        for name, obj in registry.items():
            print(f"  {name:<24} {first_doc_line(obj)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        close = difflib.get_close_matches(stage, STAGES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown stage {stage!r}.{hint} Valid stages: {', '.join(STAGES)}. "
              f"Run `python -m vau --help` for usage.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if stage == "data":
            return _data(rest)
        if stage == "score":
            from vau.score import main as score_main

            return score_main(rest)
        conf, overrides = _split(rest)
        cfg = compose(conf, overrides)
        from vau.registry import load_plugins

        load_plugins(cfg.get("plugins") or [])
        if stage == "list":
            print_registries()
            return 0
        from vau.run import run

        run(stage, cfg)
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _data(argv: list[str]) -> int:
    if not argv or argv[0] not in ("generate",):
        print("error: `python -m vau data` takes a subcommand: generate. "
              "Example: python -m vau data generate data.root=/tmp/demo data.generate.n_train=100", file=sys.stderr)
        return 2
    conf, overrides = _split(argv[1:])
    cfg = compose(conf, overrides)
    gen = cfg.data.get("generate")
    if not gen:
        raise ConfigError(f"data={cfg.data.name} has no `generate` section; use data=demo")
    from vau.datamodules.synthetic import generate

    root = generate(cfg.data.root, **dict(gen))
    print(f"demo mini-benchmark in {root}: {', '.join(f'{s}.csv' for s in ('train', 'val', 'test'))} and videos/")
    return 0
