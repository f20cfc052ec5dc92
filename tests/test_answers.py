from __future__ import annotations

import threading

import pytest

from datagen.text.answers import equivalent, extract_answer, final_answer, parse_reference


@pytest.mark.parametrize("text", ["so \\boxed{0.375}", "\\boxed{\\frac{3}{8}}", "Answer: 3/8", "We get $\\frac{3}{8}$."])
def test_equivalent_forms_match_the_reference(text):
    assert equivalent(parse_reference("3/8"), extract_answer(text))


@pytest.mark.parametrize("text", ["\\boxed{}", "", "no number here"])
def test_no_answer(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize("text, shown", [("\\boxed{abc}", "abc"), ("the answer is 0.38", "0.38"), ("\\boxed{5}", "5")])
def test_wrong_or_garbage_answers_do_not_match(text, shown):
    # Each is an answer (a product of symbols, a near miss, another number), and a wrong one.
    answer = extract_answer(text)
    assert answer is not None and answer.text == shown
    assert not equivalent(parse_reference("3/8"), answer)


def test_works_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(equivalent(parse_reference("12"), extract_answer("so \\boxed{12}"))))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.parametrize(
    "text, problem",
    [("\\boxed{?} 45", "unparsable \\boxed{?}"), ("so 45 apples. \\boxed{}", "empty \\boxed{}"), ("\\boxed{45}, no: \\boxed{}", "empty \\boxed{}")],
)
def test_a_box_that_is_no_answer_cannot_be_rescued(text, problem):
    answer, _, why = final_answer(text)
    assert answer is None and why == problem


def test_a_box_with_a_word_is_a_wrong_answer_not_a_number_elsewhere():
    answer = extract_answer("45 \\boxed{banana}")
    assert answer is not None and answer.text == "banana"
    assert not equivalent(parse_reference("45"), answer)
