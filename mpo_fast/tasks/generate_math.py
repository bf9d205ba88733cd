"""Deterministic generator of the shipped math problems (mpo_fast/tasks/data/math.jsonl).

    python -m mpo_fast.tasks.generate_math            # (re)write the shipped file
    python -m mpo_fast.tasks.generate_math --check    # fail if the shipped file differs

Every problem is produced from a seeded random.Random, and every answer is verified by a
checker that does not reuse the generator's arithmetic: the printed expression or equation is
re-read from the problem text and evaluated exactly (fractions.Fraction over a tiny AST
evaluator that accepts numbers and + - * / ^ only), or the answer is substituted back into the
relation the problem states. sympy, when installed, additionally solves each linear equation.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

SEED = 20250420
# Problems per kind: 260 in all, 52 of them in the test split.
COUNTS = {
    "arithmetic": 50,
    "linear_equation": 50,
    "fractions": 45,
    "percentages": 45,
    "word_problem": 50,
    "number_facts": 20,
}
TEST_EVERY = 5  # the 5th, 10th, ... problem of each kind goes to the test split (20%)
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "math.jsonl"

NAMES = (
    "Amara", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun", "Keziah",
    "Luis", "Mei", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomasz", "Uma", "Viktor",
    "Wen", "Ximena", "Yusuf", "Zora",
)


@dataclass(frozen=True)
class Problem:
    kind: str
    prompt: str
    answer: Fraction
    fraction_answer: bool  # print the reference as a/b even when a decimal would be exact
    check: Callable[[Fraction], bool]  # independent verification of `answer`


# -- exact evaluation of the printed text (the independent checker) --------------------------


def _eval_node(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.Pow) and right.denominator == 1 and 0 <= right <= 6:
            return left ** int(right)
    raise ValueError(f"unsupported expression node {ast.dump(node)}")


def evaluate_printed(text: str, x: Fraction | None = None) -> Fraction:
    """Exact value of arithmetic as printed in a problem (×, ÷, −, ^, implicit 7x)."""
    expr = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
    if x is not None:
        expr = re.sub(r"(\d)\s*x", r"\1*x", expr)
        expr = expr.replace("x", f"({x.numerator}/{x.denominator})")
    return _eval_node(ast.parse(expr.strip(), mode="eval"))


# -- formatting -----------------------------------------------------------------------------


def format_answer(value: Fraction, *, as_fraction: bool) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    if not as_fraction:
        # Terminating decimals (denominator 2^a 5^b) print exactly with at most 4 places.
        for places in range(1, 5):
            scaled = value * 10**places
            if scaled.denominator == 1:
                return f"{value.numerator / value.denominator:.{places}f}"
    return f"{value.numerator}/{value.denominator}"


def _money(value: Fraction) -> str:
    return f"${float(value):.2f}"


def _term(coef: int, first: bool) -> str:
    """7x, −x, + 3x ... for a coefficient of x."""
    sign = "−" if coef < 0 else "+"
    size = abs(coef)
    body = "x" if size == 1 else f"{size}x"
    if first:
        return ("−" if coef < 0 else "") + body
    return f" {sign} {body}"


def _const(value: int) -> str:
    return f" − {abs(value)}" if value < 0 else f" + {value}"


def _signed(value: int) -> str:
    return f"−{abs(value)}" if value < 0 else str(value)


# -- generators (each returns a Problem whose check does not reuse its arithmetic) -----------


def gen_arithmetic(rng: random.Random) -> Problem:
    shape = rng.randrange(5)
    if shape == 0:
        a, b, d = rng.randint(12, 49), rng.randint(11, 29), rng.randint(2, 9)
        c = d * rng.randint(3, 15)
        text, answer = f"{a} × {b} − {c} ÷ {d}", Fraction(a * b - c // d)
    elif shape == 1:
        a, b, c, d = rng.randint(5, 40), rng.randint(5, 40), rng.randint(3, 12), rng.randint(10, 99)
        text, answer = f"({a} + {b}) × {c} − {d}", Fraction((a + b) * c - d)
    elif shape == 2:
        a, b = rng.randint(20, 150), rng.randint(3, 12)
        d = rng.randint(2, 20)
        c = d + rng.randint(2, 15)
        text, answer = f"{a} − {b} × ({c} − {d})", Fraction(a - b * (c - d))
    elif shape == 3:
        a, b, c = rng.randint(3, 19), rng.randint(4, 25), rng.randint(4, 25)
        text, answer = f"{a}^2 + {b} × {c}", Fraction(a * a + b * c)
    else:
        b = rng.randint(3, 20)
        c = rng.randint(1, b - 1)
        a = (b - c) * rng.randint(2, 12)
        d, e = rng.randint(2, 15), rng.randint(2, 15)
        text, answer = f"{a} ÷ ({b} − {c}) + {d} × {e}", Fraction(a // (b - c) + d * e)
    prompt = f"Compute {text}."
    return Problem("arithmetic", prompt, answer, False, lambda value: evaluate_printed(text) == value)


def gen_linear_equation(rng: random.Random, use_sympy: bool = True) -> Problem:
    if rng.random() < 0.7:
        x = Fraction(rng.randint(-12, 15))
        q = 1
    else:
        q = rng.choice((2, 3, 4, 5))
        p = rng.choice([n for n in range(-11, 12) if n and math.gcd(n, q) == 1])
        x = Fraction(p, q)
    while True:
        a = rng.choice([n for n in range(-9, 13) if n])
        c = rng.choice(range(-6, 7))
        if (a - c) % q == 0 and a != c:
            break
    b = rng.choice([n for n in range(-30, 31) if n])
    d = int((a - c) * x + b)  # integer because q divides a - c
    left = _term(a, True) + _const(b)
    right = (_term(c, True) + (_const(d) if d else "")) if c else _signed(d)
    equation = f"{left} = {right}"
    prompt = f"Solve for x: {equation}."

    def check(value: Fraction) -> bool:
        lhs, rhs = equation.split("=")
        ok = evaluate_printed(lhs, value) == evaluate_printed(rhs, value)
        # Unique solution: the printed equation must not hold for value + 1 as well.
        ok = ok and evaluate_printed(lhs, value + 1) != evaluate_printed(rhs, value + 1)
        if not use_sympy:
            return ok
        try:
            import sympy
        except ImportError:
            return ok
        sx = sympy.Symbol("x")
        solutions = sympy.solve(sympy.Eq(a * sx + b, c * sx + d), sx)
        return ok and solutions == [sympy.Rational(value.numerator, value.denominator)]

    return Problem("linear_equation", prompt, x, False, check)


def _random_fraction(rng: random.Random, max_den: int = 12) -> Fraction:
    den = rng.randint(2, max_den)
    num = rng.choice([n for n in range(1, 2 * den) if n % den])
    return Fraction(num, den)


def _plain(frac: Fraction) -> str:
    return f"{frac.numerator}/{frac.denominator}"


def _fraction_check(text: str, answer: Fraction) -> bool:
    # Independent of Fraction: cross-multiplied integer arithmetic on the printed operands.
    tokens = text.split()
    num, den = (int(v) for v in tokens[0].split("/"))
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        n2, d2 = (int(v) for v in operand.split("/"))
        if op == "+":
            num, den = num * d2 + n2 * den, den * d2
        elif op == "−":
            num, den = num * d2 - n2 * den, den * d2
        elif op == "×":
            num, den = num * n2, den * d2
        elif op == "÷":
            num, den = num * d2, den * n2
        else:
            raise ValueError(f"unknown operator {op!r}")
    g = math.gcd(num, den)
    num, den = num // g, den // g
    if den < 0:
        num, den = -num, -den
    return (num, den) == (answer.numerator, answer.denominator)


def gen_fractions(rng: random.Random) -> Problem:
    ops = ("+", "−", "×", "÷")
    count = rng.choice((2, 2, 2, 3))
    operands = [_random_fraction(rng) for _ in range(count)]
    chosen = [rng.choice(ops) for _ in range(count - 1)]
    if count == 3:
        # Keep three-term problems free of precedence questions: only + and − mix.
        chosen = [rng.choice(("+", "−")) for _ in range(2)]
    text = _plain(operands[0])
    value = operands[0]
    for op, operand in zip(chosen, operands[1:]):
        text += f" {op} {_plain(operand)}"
        value = {"+": value + operand, "−": value - operand, "×": value * operand, "÷": value / operand}[op]
    prompt = f"Compute {text}. Write the answer as a fraction in lowest terms (or an integer)."
    return Problem("fractions", prompt, value, True, lambda v: _fraction_check(text, v))


def gen_percentages(rng: random.Random) -> Problem:
    shape = rng.randrange(5)

    def problem(prompt: str, answer: Fraction, check: Callable[[Fraction], bool]) -> Problem:
        return Problem("percentages", prompt, answer, False, check)

    if shape == 0:
        pct = rng.choice((5, 10, 12, 15, 20, 25, 30, 35, 40, 45, 60, 75, 80, 120, 150))
        base = rng.randint(2, 60) * 20
        # Check: the answer as a share of the base is the stated percentage.
        return problem(f"What is {pct}% of {base}?", Fraction(pct * base, 100), lambda v: v * 100 / base == pct)
    if shape == 1:
        pct = rng.choice((5, 10, 15, 20, 25, 30, 40))
        price = rng.randint(4, 60) * 5
        item = rng.choice(("a bicycle", "a coat", "a pair of boots", "a lamp", "a backpack", "a kettle"))
        return problem(
            f"The price of {item} is ${price}. It goes on sale at {pct}% off. What is the sale price in dollars?",
            Fraction(price * (100 - pct), 100),
            lambda v: (price - v) / price * 100 == pct,
        )
    if shape == 2:
        whole = rng.randint(2, 40) * 10
        pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 45, 50, 60, 70, 75, 80, 90))
        part = Fraction(whole * pct, 100)
        return problem(
            f"{format_answer(part, as_fraction=False)} is what percent of {whole}?",
            Fraction(pct),
            lambda v: v / 100 * whole == part,
        )
    if shape == 3:
        pct = rng.choice((10, 20, 25, 40, 50))
        original = rng.randint(3, 40) * 20
        final = Fraction(original * (100 - pct), 100)
        item = rng.choice(("a used car", "a sofa", "a tablet", "a camera", "a tent"))
        return problem(
            f"After a {pct}% discount, {item} costs ${format_answer(final, as_fraction=False)}. "
            "What was the original price in dollars?",
            Fraction(original),
            lambda v: v - v * pct / 100 == final,
        )
    start = rng.randint(4, 50) * 20
    pct = rng.choice((5, 10, 15, 20, 25, 30, 50))
    town = rng.choice(("Ashford", "Brennan Falls", "Corvale", "Dunmore", "Eastwick", "Fairhaven"))
    return problem(
        f"The population of {town} was {start}. It grew by {pct}%. What is the new population?",
        Fraction(start * (100 + pct), 100),
        lambda v: (v - start) * 100 / start == pct,
    )


def gen_word_problem(rng: random.Random) -> Problem:
    shape = rng.randrange(8)
    name = rng.choice(NAMES)

    def problem(prompt: str, answer: Fraction, check: Callable[[Fraction], bool]) -> Problem:
        return Problem("word_problem", prompt, answer, False, check)

    if shape == 0:
        speed = rng.choice((40, 45, 48, 50, 60, 64, 72, 80, 90))
        hours = Fraction(rng.randint(2, 9), 2)
        return problem(
            f"{name} drives at a steady {speed} km/h for {format_answer(hours, as_fraction=False)} hours. "
            f"How many kilometres does {name} travel?",
            speed * hours,
            lambda v: v / hours == speed,
        )
    if shape == 1:
        count, more = rng.randint(3, 9), rng.randint(4, 15)
        cents = rng.randint(60, 450)
        total = Fraction(cents * count, 100)
        thing = rng.choice(("notebooks", "pens", "mangoes", "bus tickets", "candles", "seed packets"))
        return problem(
            f"{count} {thing} cost {_money(total)} in total. At the same price each, how many dollars do "
            f"{more} {thing} cost?",
            Fraction(cents * more, 100),
            lambda v: v / more == total / count,
        )
    if shape == 2:
        r1, r2 = rng.choice(((2, 3), (3, 4), (3, 5), (4, 5), (5, 7), (2, 5), (1, 3), (5, 8)))
        unit = rng.randint(4, 30)
        total = (r1 + r2) * unit
        other = rng.choice([n for n in NAMES if n != name])
        return problem(
            f"{name} and {other} share ${total} in the ratio {r1}:{r2}. How many dollars does {other} receive?",
            Fraction(r2 * unit),
            lambda v: (total - v) / v == Fraction(r1, r2),
        )
    if shape == 3:
        a, b = rng.choice(((2, 3), (3, 6), (4, 12), (6, 12), (10, 15), (12, 24), (6, 3), (5, 20), (9, 18)))
        return problem(
            f"One pump fills a tank in {a} hours; a second pump fills it in {b} hours. Working together, how "
            "many hours do they take to fill the tank?",
            Fraction(a * b, a + b),
            lambda v: v * (Fraction(1, a) + Fraction(1, b)) == 1,
        )
    if shape == 4:
        # old + years = m * (young + years)  =>  old = m * young + (m - 1) * years
        m, young, years = rng.choice((2, 3)), rng.randint(2, 15), rng.randint(1, 20)
        old = m * young + (m - 1) * years
        times = {2: "twice", 3: "three times"}[m]
        return problem(
            f"{name} is {old} years old and a cousin is {young}. In how many years will {name} be exactly "
            f"{times} as old as the cousin?",
            Fraction(years),
            lambda v: old + v == m * (young + v),
        )
    if shape == 5:
        # k * b + y = 2 * (b + y)  =>  y = (k - 2) * b
        k, brother = rng.choice((3, 4)), rng.randint(2, 14)
        years = (k - 2) * brother
        times = {3: "three", 4: "four"}[k]
        return problem(
            f"{name} is {times} times as old as a younger brother. In {years} years {name} will be twice as "
            f"old as him. How old is {name} now?",
            Fraction(k * brother),
            lambda v: v + years == 2 * (v / k + years),
        )
    if shape == 6:
        length = rng.randint(6, 40)
        width = rng.randint(3, length - 1)
        perimeter = 2 * (length + width)
        return problem(
            f"A rectangular garden has a perimeter of {perimeter} m and a length of {length} m. What is its "
            "area in square metres?",
            Fraction(length * width),
            lambda v: 2 * (length + v / length) == perimeter,
        )
    count = rng.choice((3, 4, 5))
    start = rng.randint(-10, 60)
    total = sum(range(start, start + count))
    return problem(
        f"The sum of {count} consecutive integers is {total}. What is the largest of them?",
        Fraction(start + count - 1),
        lambda v: sum(v - i for i in range(count)) == total,
    )


_WORDS = {3: "Three", 4: "Four", 5: "Five"}


def gen_number_facts(rng: random.Random) -> Problem:
    shape = rng.randrange(3)

    def problem(prompt: str, answer: Fraction, check: Callable[[Fraction], bool]) -> Problem:
        return Problem("number_facts", prompt, answer, False, check)

    if shape == 0:
        g = rng.randint(2, 12)
        a, b = g * rng.randint(2, 15), g * rng.randint(2, 15)
        return problem(
            f"What is the least common multiple of {a} and {b}?",
            Fraction(math.lcm(a, b)),
            # Brute force: the first positive multiple of a that b divides.
            lambda v: v == next(m for m in range(a, a * b + 1, a) if m % b == 0),
        )
    if shape == 1:
        g = rng.randint(2, 25)
        a, b = g * rng.randint(2, 20), g * rng.randint(2, 20)
        return problem(
            f"What is the greatest common divisor of {a} and {b}?",
            Fraction(math.gcd(a, b)),
            lambda v: v == max(d for d in range(1, min(a, b) + 1) if a % d == 0 and b % d == 0),
        )
    count = rng.choice((4, 5, 6))
    values = [rng.randint(2, 60) for _ in range(count - 1)]
    # The missing number is 1..80 and makes the mean an integer.
    missing = rng.choice([r for r in range(1, 81) if (sum(values) + r) % count == 0])
    mean = (sum(values) + missing) // count
    listed = ", ".join(str(v) for v in values)
    return problem(
        f"The mean of {count} numbers is {mean}. {_WORDS[count - 1]} of them are {listed}. "
        "What is the remaining number?",
        Fraction(missing),
        lambda v: (sum(values) + v) / count == mean,
    )


GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "arithmetic": gen_arithmetic,
    "linear_equation": gen_linear_equation,
    "fractions": gen_fractions,
    "percentages": gen_percentages,
    "word_problem": gen_word_problem,
    "number_facts": gen_number_facts,
}


def generate(seed: int = SEED, *, use_sympy: bool = True) -> list[dict]:
    """All rows, deterministic for a seed. Raises if any answer fails its checker.

    use_sympy=False skips the optional sympy cross-check (importing sympy and solving 50
    equations takes ~3 s; the substitution checker still runs). The rows are the same either way.
    """
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    for kind, count in COUNTS.items():
        made = 0
        while made < count:
            problem = gen_linear_equation(rng, use_sympy) if kind == "linear_equation" else GENERATORS[kind](rng)
            if problem.prompt in seen:
                continue  # duplicates would leak between train and test
            if not problem.check(problem.answer):
                raise AssertionError(f"checker rejected the generated answer {problem.answer} for: {problem.prompt}")
            seen.add(problem.prompt)
            made += 1
            rows.append(
                {
                    "id": f"math-{kind}-{made:03d}",
                    "split": "test" if made % TEST_EVERY == 0 else "train",
                    "prompt": problem.prompt,
                    "reference": format_answer(problem.answer, as_fraction=problem.fraction_answer),
                    "meta": {"kind": kind},
                }
            )
    return rows


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSONL path")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    text = to_jsonl(generate(args.seed))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} differs from a fresh generation; run without --check to rewrite it", file=sys.stderr)
            return 1
        print(f"{args.out} matches ({text.count(chr(10))} problems)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {text.count(chr(10))} problems to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
