import pytest

from skillmoe_ray.answers import extract_boxed, extract_choice, last_boxed, math_equal
from skillmoe_ray.tasks import get_task


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("Thus the answer is (C).", 10, "C"),
        ("The answer is J", 10, "J"),
        ("the answer is (J)", 4, None),  # J is not one of 4 options
        ("First the answer is (B). Question: ... the answer is (D)", 10, "B"),  # first wins, as in MMLU-Pro
        ("Answer: D", 4, "D"),
        ("no answer given", 10, None),
        ("<think>the answer is (A)</think> so the answer is (B)", 4, "B"),
        ("", 4, None),
    ],
)
def test_extract_choice(text, n, expected):
    assert extract_choice(text, n) == expected


def test_boxed_extraction_balances_braces_and_takes_the_last():
    assert last_boxed(r"try \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"The answer is \boxed{033}.") == "033"
    assert extract_boxed("no box") is None


def test_math_equal_uses_math_verify_gold_first():
    assert math_equal("0.5", r"\frac{1}{2}")
    assert math_equal("33", "33")
    assert not math_equal("33", "34")
    assert not math_equal("33", "not a number at all")


def test_task_answer_formats():
    mmlu, gpqa, aime = get_task("MMLU_Pro"), get_task("gpqa"), get_task("AIME24")
    assert mmlu.num_choices == 10 and gpqa.num_choices == 4
    assert mmlu.extract("the answer is (H)") == "H"
    assert gpqa.extract("the answer is (H)") is None
    assert aime.extract(r"so \boxed{204}") == "204"
    assert aime.is_correct("204.0", "204")
    assert "boxed" in aime.instruction() and "(X)" in mmlu.instruction()
