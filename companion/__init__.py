"""Companion package of the course *Attention in Deep RL*.

Every algorithm the book teaches lives here, once; the notebooks import it.
The modules are meant to be read next to the chapters that introduce them:

- :mod:`companion.budget` -- the ``quick`` / ``book`` / ``full`` switch (``COMPANION_BUDGET``).
- :mod:`companion.utils` -- seeding, device choice and progress bars.
- :mod:`companion.envs` -- environment registration (ALE, MinAtar, popgym) and ``make_env``.
- :mod:`companion.check` -- the install check run by ``notebooks/00_setup.ipynb``.
"""

from __future__ import annotations

#: the release; ``pyproject.toml`` reads it from here
__version__ = "0.1.0"

from companion.budget import BUDGETS, BudgetError, by_budget, get_budget
from companion.utils import get_device, progress, seed_everything

__all__ = [
    "BUDGETS",
    "BudgetError",
    "__version__",
    "by_budget",
    "get_budget",
    "get_device",
    "progress",
    "seed_everything",
]
