from fractions import Fraction

import pytest

from mpo_fast.tasks import answers_match, extract_boxed, get_task, normalise_answer, parse_number
from mpo_fast.tasks.example import TaskExample


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{1} then corrected: \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{ {a} + {b} }", "{a} + {b}"),
        ("$\\boxed 7$", "7"),
        ("\\fbox{9}", "9"),
        ("\\boxed{3} and an unclosed \\boxed{4", "3"),
        ("no box here: 42", None),
        ("\\boxed{", None),
        ("\\boxedx{3}", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("1,000", 1000),
        ("12,345,678", 12345678),
        ("0.75", Fraction(3, 4)),
        (".5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("-3/4", Fraction(-3, 4)),
        ("6/-8", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{3}{4}", Fraction(3, 4)),
        ("\\tfrac34", Fraction(3, 4)),
        ("\\frac34", Fraction(3, 4)),
        ("-\\frac{5}{2}", Fraction(-5, 2)),
        ("\\frac{-5}{2}", Fraction(-5, 2)),
        ("\\frac{1.5}{3}", Fraction(1, 2)),
        ("2\\frac{1}{2}", Fraction(5, 2)),
        ("$\\frac{1}{3}$", Fraction(1, 3)),
        ("\\left(\\frac{1}{3}\\right)", None),
        ("x = 5", 5),
        ("x=-\\frac{2}{3}", Fraction(-2, 3)),
        ("25\\%", 25),
        ("90^\\circ", 90),
        ("\\$12.50", Fraction(25, 2)),
        ("12 \\text{ cm}", 12),
        ("45 km/h", 45),
        ("3x", None),
        ("1/0", None),
        ("\\frac{1}{0}", None),
        ("abc", None),
        ("", None),
        ("9" * 5000, None),  # over the length cap: never handed to int()
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == (None if value is None else Fraction(value))


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("\\frac{3}{4}", "0.75"),
        ("0.750", "3/4"),
        ("\\dfrac{6}{8}", "3/4"),
        ("x = 4.5", "9/2"),
        ("-\\frac{1}{2}", "-0.5"),
        ("1,000", "1000"),
        ("211.50", "211.5"),
        ("\\$92", "92"),
        ("25\\%", "25"),
        ("\\frac{\\sqrt2}{2}", "\\frac{\\sqrt{2}}{2}"),
        ("(2, 3)", "(2,3)"),
        ("\\text{Monday}", "monday"),
    ],
)
def test_equivalent_answers_match(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("0.333", "1/3"),
        ("3/4", "4/3"),
        ("-5", "5"),
        ("5", "-5"),
        ("12", "120"),
        ("3x", "3"),
        ("", "0"),
        ("", ""),
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("7", "x+7"),
        ("(2, 3)", "(3,2)"),
        ("2\\frac{1}{2}", "2"),
    ],
)
def test_different_answers_do_not_match(predicted, reference):
    assert not answers_match(predicted, reference)


def test_normalise_answer_strips_latex_noise():
    assert normalise_answer("$\\left( 1 \\right)$.") == "( 1 )"
    assert normalise_answer("\\text{\\textbf{yes}}") == "yes"


def test_math_rule_reward():
    task = get_task("math")
    example = TaskExample("m1", "Compute 1/2 + 1/4.", reference="3/4")
    assert task.rule_reward(example, "1/2 + 1/4 = 3/4, so \\boxed{\\frac{3}{4}}") == 1.0
    assert task.rule_reward(example, "I think \\boxed{0.75}.") == 1.0
    assert task.rule_reward(example, "\\boxed{\\frac{3}{4}} no wait \\boxed{1}") == 0.0
    assert task.rule_reward(example, "The answer is 3/4.") == 0.0  # no box, no credit
    assert task.rule_reward(example, "\\boxed{4/3}") == 0.0
    assert task.rule_reward(TaskExample("m2", "p"), "\\boxed{1}") is None


def test_shipped_math_references_are_self_consistent():
    task = get_task("math")
    examples = task.load(split=None)
    for example in examples:
        assert parse_number(example.reference) is not None, example
        assert task.rule_reward(example, f"Work... \\boxed{{{example.reference}}}") == 1.0
        wrong = parse_number(example.reference) + 1
        assert task.rule_reward(example, f"\\boxed{{{wrong.numerator}/{wrong.denominator}}}") == 0.0
