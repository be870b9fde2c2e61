"""``python -m vau <stage> [conf=NAME] [overrides...]``.

A stage imports its own code when it runs (the imports marked "deferred"): the training and evaluation stack
(torch, Lightning, transformers) takes about 5 s to import, which ``--help``, ``list``, a mistyped stage or a
config error should not wait for (``import vau.cli`` alone: about 0.2 s).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys

from vau.config import GROUPS, ConfigError, choices, compose, split_args
from vau.data.annotations import AnnotationError
from vau.data.synthetic import generate
from vau.registry import ALL, RegistryError, first_doc_line, load_plugins

STAGES = {
    "fit": "train (SFT or GRPO, per module=...), then evaluate on the test split",
    "validate": "evaluate on the val split (ckpt_path=PATH|last to load weights)",
    "test": "evaluate on the test split and write predictions (ckpt_path=PATH|last)",
    "predict": "run a checkpoint (ckpt=PATH|last) or a model (backbone.path=) on annotations=FILE or videos=DIR: "
               "task=NAME out=FILE.jsonl [qa_shifts=all] (resumable; JSON lines + CSV)",
    "list": "print every registered task, training algorithm, backbone, frame sampler and reward",
    "score": "score a predictions file against annotations: annotations=FILE predictions=FILE [task=qa|tag|cls|cls_binary] [report=DIR]",
    "report": "re-render the HTML page of a score: score=DIR/score.json [out=DIR/report.html] [thumbs=8]",
    "export": "checkpoint -> Hugging Face folder: ckpt=PATH|last out=DIR [merge=true] (PEFT adapter or full model)",
    "data": "data tools: `data generate` (demo data), `data stats` (task-view counts), `data check` (videos), "
            "`data reflect` (reflection chains), `data difficulty` (a model's pass rate per training row)",
    "judge": "score free-text replies (describe; <think> reasoning) with a judge model on VAU-Eval's five "
             "dimensions: predictions=FILE annotations=FILE [out=DIR] judge.path=DIR | judge.base_url=URL judge.model=NAME",
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


HELP_FLAGS = ("-h", "--help")
COMPOSED_STAGES = ("fit", "validate", "test", "list")  # stages that run on the composed config


def stage_usage(stage: str, argv: list[str] = ()) -> str:
    """What ``python -m vau <stage> --help`` prints: the stage's usage line and the keys it takes."""
    if stage == "data":
        return DATA_USAGE
    if stage in COMPOSED_STAGES:
        return "\n".join([
            f"usage: python -m vau {stage} [conf=NAME|PATH.yaml] [key=value ...] [--cfg job]",
            "",
            f"  {STAGES[stage]}",
            "",
            "Config groups (GROUP=NAME):",
            *[f"  {g:<11} {', '.join(choices(g))}" for g in GROUPS],
            "",
            "Top-level keys of the composed config (any key can be overridden, e.g. trainer.max_steps=10):",
            f"  {', '.join(_top_keys())}",
            "",
            "`--cfg job` prints the composed, resolved config of conf=NAME and the overrides, and runs nothing.",
        ])
    module = {"score": "vau.eval.score", "report": "vau.eval.html_report", "judge": "vau.eval.judge", "predict": "vau.predict",
              "export": "vau.export"}[stage]
    import importlib

    return f"{importlib.import_module(module).USAGE}\n\n  {STAGES[stage]}"


def _top_keys() -> list[str]:
    try:
        return sorted(str(k) for k in compose(None, []).keys())
    except ConfigError as err:
        return [f"(the default config does not compose: {err})"]


def composed_yaml(cfg) -> str:
    """The config as YAML, interpolations resolved where they can be (a missing value stays as written)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves at run time (e.g. a run folder): show it unresolved
        return OmegaConf.to_yaml(cfg)


def _split(argv: list[str]) -> tuple[str | None, list[str]]:
    conf, _, rest = split_args(argv, own=())
    return conf, rest


def print_registries() -> None:
    for kind, registry in ALL.items():
        print(f"{kind}s:")
        for name, obj in registry.items():
            print(f"  {name:<24} {first_doc_line(obj)}")


# Lightning log lines that advertise products, or that only say vau brought its own model summary.
NOISE = ("\N{ELECTRIC LIGHT BULB} Tip:", "Trainer already configured with model summary callbacks")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE)


def setup_logging() -> None:
    """One handler (the root's) for every message, Lightning's included, each printed once.

    Lightning attaches its own console handlers when imported (``lightning``: "INFO: ...", and
    ``lightning.pytorch`` / ``lightning.fabric`` when the root has none); with vau's root handler every Lightning
    message would print twice. Import it first, then route its loggers to the root handler only.
    """
    import warnings

    import lightning  # noqa: F401  (its import installs the handlers taken off below)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    # Raised inside Lightning's own code on every run; nothing a vau user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


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
    if any(arg in HELP_FLAGS for arg in rest):
        print(stage_usage(stage, rest))
        return 0
    setup_logging()
    try:
        if stage == "data":
            return _data(rest)
        if stage == "score":
            from vau.eval.score import main as score_main  # deferred: see the module docstring

            load_plugins()  # tasks of installed plugin packages can be scored too

            return score_main(rest)
        if stage == "report":
            from vau.eval.html_report import main as report_main  # deferred: see the module docstring

            return report_main(rest)
        if stage == "judge":
            from vau.eval.judge import main as judge_main  # deferred: see the module docstring

            return judge_main(rest)
        if stage == "predict":
            from vau.predict import main as predict_main  # deferred: see the module docstring

            return predict_main(rest)
        if stage == "export":
            from vau.export import main as export_main  # deferred: see the module docstring

            return export_main(rest)
        conf, overrides = _split(rest)
        show_config = "--cfg" in overrides
        if show_config:  # Hydra's habit: `--cfg job` prints the composed config instead of running
            at = overrides.index("--cfg")
            overrides = overrides[:at] + overrides[at + 1 + (overrides[at + 1:at + 2] in (["job"], ["all"])):]
        cfg = compose(conf, overrides)
        if show_config:
            print(composed_yaml(cfg))
            return 0

        load_plugins(cfg.get("plugins") or [])
        if stage == "list":
            print_registries()
            return 0
        from vau.run import run  # deferred: see the module docstring

        run(stage, cfg)
        return 0
    except (ConfigError, RegistryError) as err:  # a wrong key or an unknown component name: the user can fix it
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # A malformed annotation file under fit/validate/test: one line naming file and row, as `data check` gives.
        if isinstance(err, AnnotationError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        if os.environ.get("VAU_DEBUG", "") not in ("", "0"):
            raise
        # Anything else is a fault vau did not foresee: one line, and the way to the traceback.
        print(f"error: {type(err).__name__}: {err}\n(an unexpected error in `python -m vau {stage}`: rerun with "
              f"VAU_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


DATA_USAGE = """usage: python -m vau data <generate|stats|check|reflect|difficulty> [conf=NAME] [key=value ...]

  generate   write the demo mini-benchmark of the chosen config (data=demo), e.g. data.generate.n_train=100
  stats      per split / source / task view: kept samples, what was left out and why, class histogram
             annotations=FILE[,FILE...]   (default: the config's data.annotations.{train,val,test})
  check      open every video of the annotations; list missing, unreadable and zero-frame ones (no training)
             annotations=FILE[,FILE...] video_root=DIR [video_roots.msad=DIR ...] [workers=2]
             (default folders: the config's data.video_root / data.video_roots); exit code 1 on any problem
  reflect    add SRVAU-R1 reflection chains (one per row of each reflect task) to an annotation CSV
             annotations=FILE out=FILE [builder=template] [seed=0] [corrective_ratio=0.5] [tasks=qa_reflect,...]
             builder=teacher (a model writes the reflections): teacher.path=DIR | teacher.base_url=URL
             teacher.model=NAME [teacher.concurrency=4 teacher.retries=3 teacher.cache=FILE]
  difficulty a model's pass rate on every training row over G sampled answers (for data.difficulty.keep)
             [ckpt=PATH|last] annotations=FILE [task=qa] num_generations=8 out=FILE.jsonl [temperature=T]

Other key=value arguments are config overrides, e.g. data=vau_bench data.views.tag_eval_normal=true."""


def _data_args(argv: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    return split_args(argv, own=("annotations", "video_root", "workers"), prefixes=("video_roots.",))


def _data(argv: list[str]) -> int:
    """``python -m vau data generate|stats|check ...`` (see DATA_USAGE)."""
    if not argv or argv[0] not in ("generate", "stats", "check", "reflect", "difficulty"):
        print(f"error: `python -m vau data` takes a subcommand.\n{DATA_USAGE}", file=sys.stderr)
        return 2
    sub = argv[0]
    if sub == "reflect":  # no config: the annotation file and the builder's options only
        from vau.datatools.reflection import main as reflect_main  # deferred: see the module docstring

        return reflect_main(argv[1:])
    if sub == "difficulty":  # a model's pass rate per training row (vau.difficulty)
        from vau.difficulty import main as difficulty_main  # deferred: see the module docstring

        return difficulty_main(argv[1:])
    conf, own, overrides = _data_args(argv[1:])
    cfg = compose(conf, overrides)
    if sub == "generate":
        gen = cfg.data.get("generate")
        if not gen:
            raise ConfigError(f"data={cfg.data.name} has no `generate` section; use data=demo")

        root = generate(cfg.data.root, **dict(gen))
        print(f"demo mini-benchmark in {root}: {', '.join(f'{s}.csv' for s in ('train', 'val', 'test'))} and videos/")
        return 0
    from vau.datamodules.inventory import check_videos, split_of, stats_report  # deferred: see the module docstring
    from vau.datamodules.views import ViewOptions  # deferred: see the module docstring

    if "annotations" in own:
        files = [(split_of(p), p) for p in own["annotations"].split(",") if p]
    else:
        files = [(k, str(v)) for k, v in (cfg.data.get("annotations") or {}).items() if v]
    if not files:
        raise ConfigError("no annotation files: pass annotations=FILE or set data.annotations.{train,val,test}")
    try:
        if sub == "stats":
            print(stats_report(files, ViewOptions.from_cfg(cfg.data.get("views")), cfg.data.get("format")))
            return 0
        from vau.datamodules.dataset import VideoResolver  # deferred: see the module docstring

        roots = {k.split(".", 1)[1]: v for k, v in own.items() if k.startswith("video_roots.")}
        if "video_root" in own or roots:  # folders given on the command line replace the config's
            root = own.get("video_root")
        else:
            root = cfg.data.get("video_root")
            roots = {k: str(v) for k, v in (cfg.data.get("video_roots") or {}).items() if v}
        resolver = VideoResolver(root, roots)
        result = check_videos([path for _, path in files], resolver, workers=int(own.get("workers", 2)),
                              decoder=str(cfg.data.get("decoder", "pyav")), format=cfg.data.get("format"))
        print(result.report())
        return 0 if result.ok else 1
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
