import pytest

from companion.budget import BUDGETS, DEFAULT_BUDGET, ENV_VAR, BudgetError, by_budget, get_budget


def test_default_is_book(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert DEFAULT_BUDGET == "book"
    assert get_budget() == "book"
    monkeypatch.setenv(ENV_VAR, "")
    assert get_budget() == "book"


@pytest.mark.parametrize("name", BUDGETS)
def test_each_valid_budget_from_env(monkeypatch, name):
    monkeypatch.setenv(ENV_VAR, f" {name.upper()} ")
    assert get_budget() == name


def test_unknown_budget_is_one_line_listing_valid_ones(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(BudgetError) as info:
        get_budget()
    message = str(info.value)
    assert "\n" not in message
    assert "COMPANION_BUDGET='fast'" in message
    assert all(name in message for name in BUDGETS)
    with pytest.raises(ValueError):  # BudgetError is a ValueError
        get_budget("huge")


def test_explicit_budget_beats_env(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "full")
    assert get_budget("quick") == "quick"


def test_by_budget_picks(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "full")
    assert by_budget(quick=1, book=2, full=3) == 3
    assert [by_budget(quick=1, book=2, full=3, budget=b) for b in BUDGETS] == [1, 2, 3]
