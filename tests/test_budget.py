from __future__ import annotations

import pytest

from autocompress.budget import parse_budget
from autocompress.errors import UserError


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [("2.5ms", 2.5), ("800us", 0.8), ("800µs", 0.8), ("1s", 1000.0), (" 3 ms ", 3.0), ("1e-3s", 1.0)],
)
def test_absolute_budgets(text, expected_ms):
    budget = parse_budget(text)
    assert budget.fraction is None
    assert budget.resolve(10.0) == pytest.approx(expected_ms)
    assert budget.resolve(1234.0) == pytest.approx(expected_ms)  # independent of the baseline


def test_fraction_budget_resolves_against_baseline():
    budget = parse_budget("0.5x")
    assert budget.absolute_ms is None
    assert budget.fraction == 0.5
    assert budget.resolve(10.0) == pytest.approx(5.0)
    assert budget.resolve(3.0) == pytest.approx(1.5)
    assert parse_budget("1x").resolve(7.0) == pytest.approx(7.0)


def test_budget_text_is_kept():
    assert parse_budget(" 2.5ms ").text == "2.5ms"


@pytest.mark.parametrize("text", ["fast", "", "-1ms", "0ms", "2x", "0x", "ms", "2.5", "2.5 hours", "1.5x"])
def test_invalid_budgets_raise_user_error(text):
    with pytest.raises(UserError):
        parse_budget(text)
