import pytest

from skillmoe_ray.tasks.answers import (extract_boxed, extract_choice, extract_number, extract_regex, extract_stated,
                                  last_boxed, math_equal, normalize_text, parse_number)
from skillmoe_ray.errors import DataError
from skillmoe_ray.tasks.catalogue import BoxedFormat, ChoiceFormat, ExactFormat, NumberFormat, RegexFormat, Task, get_task


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


# ---------------------------------------------------------------- the answer formats of defined tasks


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("The answer is 1,865", "1865"),  # thousands separators
        ("so 12,000.50 dollars", "12000.5"),
        ("It fell to -7 degrees", "-7"),
        ("It fell to \u22127 degrees", "-7"),  # a Unicode minus
        ("10 - 3 = 7", "7"),  # a subtraction, not a negative number
        ("The difference is 10 - 5", "5"),  # "- 5" with a space is an operator
        ("x-5", "5"),  # a hyphen after a letter is no sign
        ("half of it: 3/4", "0.75"),  # simple fractions
        ("\\boxed{\\frac{1}{2}}", "0.5"),  # and LaTeX ones
        ("costs $12.50.", "12.5"),
        ("grew by 10%", "10"),
        ("about 2.5e3 of them", "2500"),
        ("a .5 chance", "0.5"),
        ("1,2345", "2345"),  # not a thousands group: two numbers
        ("<think>maybe 5</think> it is 6", "6"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_number_takes_the_last_number(text, expected):
    assert extract_number(text) == expected


def test_extract_number_after_a_named_field():
    assert extract_number("Answer: 24 * $12.00 = $288.00", "Answer") == "288"  # the last number of the value
    assert extract_number("answer: 3\nwait, recheck... Answer: 4\nthanks 99", "Answer") == "4"  # the last field
    assert extract_number("**Answer:** 1,000", "Answer") == "1000"  # markdown emphasis
    assert extract_number("Result = -2", "Result") == "-2"
    assert extract_number("The answer is 5", "Answer") is None  # the field is not there
    assert extract_number("Answer: none", "Answer") is None
    assert extract_number("MyAnswer: 7", "Answer") is None  # a field name, not a word's tail


def test_parse_number_reads_one_number_or_none():
    assert parse_number("1,234") == 1234 and parse_number(" -3.5 ") == -3.5 and parse_number("3/4") == 0.75
    assert parse_number(42) == 42.0 and parse_number(0.5) == 0.5 and parse_number("$7") == 7
    assert parse_number("3 4") is None and parse_number("none") is None and parse_number(True) is None
    assert parse_number(None) is None and parse_number("1/0") is None


def test_number_format_compares_within_its_tolerance():
    exact = NumberFormat()
    assert exact.is_correct("42", "42") and exact.is_correct("42.0000001", "42") and not exact.is_correct("42.1", "42")
    assert exact.is_correct("1865", "1,865") and exact.is_correct("-7", "-7") and not exact.is_correct("7", "-7")
    assert not exact.is_correct("x", "42")
    loose = NumberFormat(tolerance=0.5)
    assert loose.is_correct("42.4", "42") and not loose.is_correct("42.6", "42")
    rel = NumberFormat(tolerance=0, relative_tolerance=0.01)
    assert rel.is_correct("1005", "1000") and not rel.is_correct("1011", "1000")
    # votes: numbers equal within the tolerance are one vote; others are not
    assert loose.same("42", "42.3") and not loose.same("42", "43") and exact.same("0.5", "0.5")
    assert exact.gold_error("1,865") is None and exact.gold_error("forty") == "must be a number"
    assert NumberFormat("Answer").statement("12") == "Answer: 12" and exact.statement("12") == "The answer is 12"
    assert "Answer: N" in NumberFormat("Answer").instruction() and '"The answer is N"' in exact.instruction()


def test_exact_format_ignores_case_spacing_quotes_and_a_final_period():
    fmt = ExactFormat()
    assert extract_stated("I think the answer is **Paris**.") == "Paris"
    assert extract_stated("Answer: New  York City\nbye") == "New York City"
    assert extract_stated("the answer is A. later the answer is B") == "B"  # the last statement
    assert extract_stated("nothing stated") is None and extract_stated("the answer is") is None
    assert fmt.extract('The answer is "Blue whale".') == "Blue whale"
    assert fmt.is_correct("blue WHALE", "Blue whale") and fmt.same("Paris.", "paris")
    assert not fmt.is_correct("Blue", "Blue whale")
    assert normalize_text(" 'Ab  C'. ") == "ab c"
    assert fmt.gold_error("  ") == "is empty" and fmt.gold_error("x") is None


def test_regex_format_reads_group_one_of_the_last_match():
    fmt = RegexFormat(r"FINAL\[(\w+)\]")
    assert fmt.extract("FINAL[abc] ... FINAL[xyz]") == "xyz"
    assert fmt.extract("no match") is None and fmt.extract("final[abc]") is None  # case-sensitive by default
    assert RegexFormat(r"final\[(\w+)\]", ignore_case=True).extract("FINAL[Q]") == "Q"
    assert fmt.is_correct("XYZ", "xyz")  # compared as exact text
    assert RegexFormat(r"answer is (\w+)").statement("abc") == "The answer is abc"
    with pytest.raises(DataError, match="cannot state"):  # simulated answers need a statement the pattern reads
        fmt.statement("abc")
    assert extract_regex("<think>FINAL[a]</think>", fmt.compiled) is None  # thinking is not the answer


def test_choice_and_boxed_formats_as_tasks():
    choice = Task("t", ChoiceFormat(5))
    assert choice.extract("the answer is (E)") == "E" and choice.extract("the answer is (F)") is None
    assert choice.is_correct("e", "E") and choice.num_choices == 5 and choice.answer_format == "choice"
    assert choice.answer.gold_error("F") and choice.answer.gold_error("C") is None
    boxed = Task("b", BoxedFormat(), custom_instruction="Put it in a box.")
    assert boxed.instruction() == "Put it in a box." and boxed.num_choices is None
    assert boxed.same_answer("0.5", "\\frac{1}{2}") and boxed.extract(None) is None
    assert not boxed.is_correct(None, "1") and not boxed.is_correct("1", None)
    with pytest.raises(ValueError):
        ChoiceFormat(11)


@pytest.mark.parametrize("field", ["answer", "Answer:", '"answer":', "**Answer:**", "'answer'", "answer ="])
def test_a_field_is_the_same_however_it_is_written(field):
    fmt = NumberFormat(field, json_key=None)  # read as text: the field pattern alone
    assert fmt.extract('{"reasoning": "24 items at $12.00", "answer": "24 * $12.00 = $288.00"}') == "288"
    assert fmt.extract("reasoning...\n**Answer:** 1,000 apples") == "1000"
    assert fmt.extract("Answer = 7") == "7" and fmt.extract("MyAnswer: 7") is None
    assert fmt.name in ("answer", "Answer") and f"{fmt.name}: N" in fmt.instruction()


JSON_CASES = [
    # text after the closing brace (a recomputation) is not the answer
    ('{"reasoning": "5 * 6 = 30", "answer": 30}\nWait, let me recompute: 5 * 6 = 31', "30", "B", "30"),
    # cut off by the token limit before the answer: no answer, not a number from the reasoning
    ('{"reasoning": "First, 12 * 4 = 48, then 48 + 7', None, None, None),
    # an answer that is no number / no letter
    ('{"reasoning": "we know 3 of 5 values", "answer": "Cannot be determined"}', None, None,
     "Cannot be determined"),
    # the first number on the answer's line is not the answer; its last number is
    ('{"reasoning": "r", "answer": "24 * $12.00 = $288.00"}', "288", None, "24 * $12.00 = $288.00"),
    # a null answer, an object without the key
    ('{"reasoning": "12", "answer": null}', None, None, None),
    ('{"reasoning": "12", "result": 12}', None, None, None),
    # a fenced object at the end of prose; keys match regardless of case
    ('Let me work it out: 5 + 5.\n```json\n{"Reasoning": "sum", "Answer": 10}\n```', "10", None, "10"),
    # prose that quotes an object mid-way is prose
    ('The object {"answer": 3} is an example. The answer is 5', "5", None, "5"),
]


@pytest.mark.parametrize("text,number,choice,exact", JSON_CASES)
def test_responses_written_as_json_are_read_from_their_answer_field(text, number, choice, exact):
    assert NumberFormat().extract(text) == number
    choice_text = text.replace('"answer": 30', '"answer": "B"')
    assert ChoiceFormat(4).extract(choice_text) == choice
    assert ExactFormat().extract(text) == exact


def test_each_format_reads_the_answer_field_its_own_way():
    assert ChoiceFormat(4).extract('{"answer": "(C) the third"}') == "C"
    assert ChoiceFormat(4).extract('{"answer": "The answer is (D)"}') == "D"
    assert ChoiceFormat(4).extract('{"answer": "E"}') is None  # not one of 4 options
    assert ChoiceFormat(4).extract('{"answer": "a cat"}') is None  # a word, not the letter a
    assert BoxedFormat().extract('{"answer": "\\\\frac{1}{2}"}') == "\\frac{1}{2}"
    assert BoxedFormat().extract('{"answer": "so \\\\boxed{7}"}') == "7"
    assert RegexFormat(r"FINAL\[(\w+)\]").extract('{"answer": "FINAL[xyz]"}') == "xyz"
    assert RegexFormat(r"FINAL\[(\w+)\]").extract('{"answer": "xyz"}') == "xyz"
    # the key is configurable, and null reads every response as text
    assert NumberFormat(json_key="final").extract('{"answer": 1, "final": 2}') == "2"
    assert NumberFormat(json_key=None).extract('{"reasoning": "r", "answer": 30} then 31') == "31"
    # text responses read as before
    assert NumberFormat().extract("so the answer is 12") == "12" and ChoiceFormat(4).extract("answer is (B)") == "B"
