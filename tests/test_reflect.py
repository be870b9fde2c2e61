"""SRVAU-R1's reflection-aware replies: format, reflect tasks, reflection data, rewards, metrics, score, fits."""

from __future__ import annotations

from vau.parsing import answer_body, has_strict_format, strict_format

REFLECT_TAGS = ("think", "answer", "reflect", "think", "answer")
CHAIN = ("<think>first look</think><answer>B</answer>\n<reflect>the key object says otherwise</reflect>"
         "<think>revised</think><answer>C</answer>")


def test_strict_format_takes_repeated_tags_in_order():
    assert strict_format(CHAIN, REFLECT_TAGS) and has_strict_format(CHAIN, REFLECT_TAGS)
    assert not has_strict_format("<think>a</think><answer>B</answer>", REFLECT_TAGS)  # no reflection
    assert not has_strict_format(CHAIN + "<answer>D</answer>", REFLECT_TAGS)  # a third answer
    swapped = CHAIN.replace("<reflect>", "<think>", 1).replace("</reflect>", "</think>", 1)
    assert not has_strict_format(swapped, REFLECT_TAGS)


def test_strict_format_refuses_a_blank_first_block_of_a_repeated_tag():
    assert not has_strict_format(CHAIN.replace("first look", " "), REFLECT_TAGS)
    assert not has_strict_format(CHAIN.replace("<answer>B</answer>", "<answer> </answer>"), REFLECT_TAGS)


def test_the_last_answer_is_the_final_answer():
    assert answer_body(CHAIN) == "C"
