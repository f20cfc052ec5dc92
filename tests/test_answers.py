from __future__ import annotations

import threading

import pytest

from datagen.answers import equivalent, extract_answer, parse_reference


@pytest.mark.parametrize("text", ["so \\boxed{0.375}", "\\boxed{\\frac{3}{8}}", "Answer: 3/8", "We get $\\frac{3}{8}$."])
def test_equivalent_forms_match_the_reference(text):
    assert equivalent(parse_reference("3/8"), extract_answer(text))


@pytest.mark.parametrize("text", ["\\boxed{}", "", "no number here"])
def test_no_answer(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize("text", ["\\boxed{abc}", "the answer is 0.38", "\\boxed{5}"])
def test_wrong_or_garbage_answers_do_not_match(text):
    answer = extract_answer(text)
    assert answer is None or not equivalent(parse_reference("3/8"), answer)


def test_works_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(equivalent(parse_reference("12"), extract_answer("so \\boxed{12}"))))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.parametrize("text", ["\\boxed{?} 45", "so 45 apples. \\boxed{}", "45 \\boxed{banana}"])
def test_a_box_is_the_answer_and_cannot_be_rescued(text):
    answer = extract_answer(text)
    assert answer is None or not equivalent(parse_reference("45"), answer)
