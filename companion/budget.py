"""One switch for how much compute a run may spend: ``quick``, ``book`` or ``full``.

The budget is read from the environment variable ``COMPANION_BUDGET`` (default ``book``):

=========  ==================================================================
``quick``  tests and CI: seconds per notebook, only checks that code runs
``book``   a reader on a laptop CPU: minutes per notebook (the default)
``full``   reproduction runs, meant for a GPU; results go to ``results/``
=========  ==================================================================

A budget scales steps and sizes. It never changes the algorithm: a ``quick`` DQN is the
same DQN run for fewer steps.
"""

from __future__ import annotations

import os
from typing import Final, TypeVar

#: the environment variable that names the budget
ENV_VAR: Final = "COMPANION_BUDGET"
#: the budgets, from the least compute to the most
BUDGETS: Final = ("quick", "book", "full")
#: the budget when ``$COMPANION_BUDGET`` is unset or empty
DEFAULT_BUDGET: Final = "book"

T = TypeVar("T")


class BudgetError(ValueError):
    """An unknown budget name. The message is one line and lists the valid names."""


def get_budget(budget: str | None = None) -> str:
    """Return the budget in force.

    Args:
        budget: an explicit name (for example from a ``--budget`` flag). When ``None``,
            ``$COMPANION_BUDGET`` is read, and when that is unset or empty, ``"book"``.

    Raises:
        BudgetError: if the name is not one of :data:`BUDGETS`.
    """
    source = "budget"
    if budget is None:
        budget = os.environ.get(ENV_VAR, "").strip() or DEFAULT_BUDGET
        source = ENV_VAR
    name = budget.strip().lower()
    if name not in BUDGETS:
        raise BudgetError(f"{source}={budget!r} is not a budget; valid budgets are: {', '.join(BUDGETS)}")
    return name


def by_budget(*, quick: T, book: T, full: T, budget: str | None = None) -> T:
    """Pick the value that belongs to the budget in force.

    >>> by_budget(quick=1_000, book=50_000, full=500_000, budget="quick")
    1000
    """
    return {"quick": quick, "book": book, "full": full}[get_budget(budget)]
