"""The ``teacher`` reflection builder: a language model writes the reflections (SRVAU-R1 reflection data).

SRVAU-R1 builds its reflection-oriented chain-of-thought data with a strong model. Here the initial answer and
reasoning come from the ``template`` logic (corrective: a plausible wrong answer; confirming: the right one), and a
chat model -- a local transformers checkpoint or an OpenAI-compatible endpoint (:mod:`vau.chat`) -- writes the
self-reflection and the revised reasoning from the annotation (question, options, truth, key object, description,
rationale) and that initial reasoning.

Options (``python -m vau data reflect ... builder=teacher teacher.KEY=VALUE``):

- ``teacher.path=DIR`` (local checkpoint) or ``teacher.base_url=URL teacher.model=NAME
  [teacher.api_key_env=OPENAI_API_KEY]`` (endpoint);
- ``teacher.concurrency=4``, ``teacher.retries=3``, ``teacher.backoff=1.0`` (seconds, doubled per retry),
  ``teacher.max_new_tokens=512``, ``teacher.timeout=120``, ``teacher.batch_size=8`` (local model);
- ``teacher.cache=FILE`` (default: ``<out stem>.teacher_cache.jsonl`` next to ``out``, or
  ``~/.cache/vau/teacher_cache.jsonl`` for in-memory chains; ``none`` = off): replies are appended as they arrive,
  so an interrupted run resumes where it stopped.

In a config, ``data.reflect: {builder: teacher, teacher: {base_url: ..., model: ...}}`` takes the same options.

Every reply is validated; a chain that fails gets no chain (counted as failed, with its reason):
``request_failed`` (no reply after the retries), ``no_reflection`` / ``no_revised_reasoning`` /
``no_final_answer`` (a part missing or blank), ``wrong_final_answer`` (the final answer is not the ground truth),
``rejects_nothing`` (a corrective reflection that neither names the initial answer nor says anything is wrong),
``rejects_right_answer`` (a confirming reflection that calls the right answer wrong). A reply that cannot be read
at all (no tags, no JSON object, or JSON nested absurdly deep) fails as ``no_reflection``.

When not one request gets a reply (the server is down, the URL or key is wrong), the builder raises
:class:`TeacherError` (``data reflect`` prints it as one ``error:`` line and exits non-zero, writing no file) rather
than writing template-only fallbacks as if the run had worked. Any reply, even one that fails validation, means the
run goes on and the failures are counted.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from vau.chat import backend_from_options, first_json_object, prefixed, runner_from_options
from vau.data.annotations import LETTERS
from vau.datatools.reflection import ReflectionBuilder, TemplateBuilder
from vau.parsing import extract_tag
from vau.registry import REFLECTORS
from vau.tasks import Sample, Task
from vau.tasks.reflect import CORRECTIVE, Chain

log = logging.getLogger(__name__)

PROMPT_VERSION = "teacher-v1"  # part of every cache key: bump it when the prompt's wording changes
KEYS = ("path", "base_url", "model", "api_key_env", "max_new_tokens", "timeout", "dtype", "device", "concurrency",
        "retries", "backoff", "cache", "batch_size")
SYSTEM = (
    "You write training data for a video anomaly understanding model that checks its own answers. You get the "
    "ground-truth annotation of a surveillance video and the model's first attempt (reasoning and answer). Write, "
    "in the first person as the model looking at the video: (1) a self-reflection that checks the first answer "
    "against concrete visual evidence from the annotation, and (2) a revised reasoning that leads to the correct "
    "answer. Never mention an annotation or a ground truth; speak about what the video shows. Reply in exactly "
    "this format and nothing else:\n<reflect>self-reflection</reflect>\n<think>revised reasoning</think>\n"
    "<answer>final answer</answer>"
)
_REJECTS = re.compile(r"\b(not|no|wrong|incorrect|mistake\w*|instead|rather|doesn't|does not|isn't|misread\w*|"
                      r"overlook\w*|actually|however)\b", re.IGNORECASE)
_CALLS_WRONG = re.compile(r"\b(is|was) (wrong|incorrect|mistaken)\b", re.IGNORECASE)


def _lines(sample: Sample, task: Task) -> list[str]:
    lines = []
    if sample.question:
        lines.append(f"Question: {sample.question.strip()}")
    if sample.options:
        lines += [f"{letter}. {text.strip()}" for letter, text in zip(LETTERS, sample.options)]
    lines.append(f"Answer format: {task.answer_format}")
    for label, value in (("Anomaly class", sample.anomaly_class), ("Key object", sample.key_object),
                         ("Video description", sample.description), ("Rationale", sample.reasoning)):
        if str(value or "").strip():
            lines.append(f"{label}: {' '.join(str(value).split())}")
    return lines


def messages(task: Task, sample: Sample, initial: Chain) -> list[dict[str, str]]:
    """The conversation asking for the reflection and revised reasoning of ``initial`` (its kind decides how)."""
    truth = task.final_answer_text(sample)
    if initial.kind == CORRECTIVE:
        verdict = (f"The first answer {initial.initial_answer} is WRONG; the correct answer is {truth}. The "
                   f"reflection must notice what in the video contradicts {initial.initial_answer}.")
    else:
        verdict = (f"The first answer {initial.initial_answer} is RIGHT. The reflection must check it against the "
                   f"video's evidence and keep it.")
    user = "\n".join([*_lines(sample, task), f"Correct answer: {truth}", "",
                      f"First attempt reasoning: {' '.join(initial.initial_reasoning.split())}",
                      f"First attempt answer: {initial.initial_answer}", verdict,
                      f"End with <answer>{truth}</answer>."])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def read_reply(text: str) -> tuple[str, str, str]:
    """(reflection, revised reasoning, final answer) from tags, else from a JSON object; "" for a missing part."""
    parts = [extract_tag(text, tag) or "" for tag in ("reflect", "think", "answer")]
    if all(parts):
        return tuple(parts)  # type: ignore[return-value]
    data = first_json_object(text) or {}
    named = [data.get(k) for k in ("reflection", "revised_reasoning", "final_answer")]
    return tuple(p or (str(n).strip() if isinstance(n, (str, int, float)) else "")  # type: ignore[return-value]
                 for p, n in zip(parts, named))


def validate(task: Task, sample: Sample, initial: Chain, text: str | None) -> tuple[Chain | None, str | None]:
    """The chain a reply makes, or None and the reason it is refused (see the module doc)."""
    if text is None:
        return None, "request_failed"
    reflection, revised, answer = read_reply(text)
    for value, reason in ((reflection, "no_reflection"), (revised, "no_revised_reasoning"),
                          (answer, "no_final_answer")):
        if not value.strip():
            return None, reason
    if not task.is_correct(task.accuracy(f"<answer>{answer}</answer>", sample)):
        return None, "wrong_final_answer"
    if initial.kind == CORRECTIVE:
        if initial.initial_answer not in reflection and not _REJECTS.search(reflection):
            return None, "rejects_nothing"
    elif _CALLS_WRONG.search(reflection):
        return None, "rejects_right_answer"
    return replace(initial, reflection=" ".join(reflection.split()), revised_reasoning=revised.strip()), None


class TeacherError(ValueError):
    """Not one teacher request got a reply; the message gives the first error (URL, HTTP status)."""


@REFLECTORS.register("teacher")
class TeacherBuilder(ReflectionBuilder):
    """Template initial answers; a chat model (local checkpoint or OpenAI-compatible endpoint) writes each
    reflection and revised reasoning, validated against the ground truth."""

    def __init__(self, **kwargs) -> None:
        nested = kwargs.pop("teacher", None)  # data.reflect: {builder: teacher, teacher: {base_url: ...}} in a config
        if nested is not None:
            if not hasattr(nested, "items"):
                raise ValueError(f"builder=teacher: `teacher` must be a mapping of options, got {nested!r}")
            kwargs = {**{f"teacher.{k}": v for k, v in nested.items()}, **kwargs}
        super().__init__(**kwargs)
        unknown = sorted(k for k in kwargs if not (k.startswith("teacher.") and k[len("teacher."):] in KEYS))
        if unknown:
            raise ValueError(f"builder=teacher: unknown option(s) {unknown}; known: "
                             f"{', '.join('teacher.' + k for k in KEYS)}")
        self.settings = prefixed(kwargs, "teacher")
        self.backend = backend_from_options(self.settings, "teacher")
        self.template = TemplateBuilder()

    def _initial(self, task: Task, sample: Sample, corrective: bool, rng: random.Random) -> Chain | None:
        chain = self.template.build(task, sample, True, rng) if corrective else None
        return chain if chain is not None else self.template.build(task, sample, False, rng)

    def build(self, task: Task, sample: Sample, corrective: bool, rng: random.Random) -> Chain | None:
        return self.build_many([(task, sample, corrective, rng)])[0]

    def build_many(self, requests: Sequence[tuple[Task, Sample, bool, random.Random]]) -> list[Chain | None]:
        initials = [self._initial(*request) for request in requests]
        asked = [i for i, chain in enumerate(initials) if chain is not None]
        if len(asked) < len(requests):
            self.failures["no_ground_truth"] += len(requests) - len(asked)
        default = (self.output.with_name(f"{self.output.stem}.teacher_cache.jsonl") if self.output is not None
                   else Path("~/.cache/vau/teacher_cache.jsonl").expanduser())
        runner = runner_from_options(self.backend, self.settings, "teacher", default, PROMPT_VERSION, "teacher")
        conversations = [messages(requests[i][0], requests[i][1], initials[i]) for i in asked]
        log.info("teacher: %d chains from %s (cache %s)", len(asked), self.backend.describe(), runner.cache)
        replies = runner.run(conversations)
        if replies and all(reply.text is None for reply in replies):
            why = " ".join(str(next((r.error for r in replies if r.error), "no reply")).split())
            raise TeacherError(f"teacher: none of the {len(replies)} requests succeeded; the first error: {why}")
        out: list[Chain | None] = [None] * len(requests)
        for i, reply in zip(asked, replies):
            task, sample = requests[i][0], requests[i][1]
            chain, reason = validate(task, sample, initials[i], reply.text)
            out[i] = chain
            if reason is not None:
                self.failures[reason] += 1
                log.debug("teacher: %s row %s (%s): %s", task.name, sample.video, reason,
                          reply.error or (reply.text or "")[:200])
        return out
