"""lm-eval renders every doc's prompt with `utils.apply_template`, which compiles the task's Jinja template anew
each time (env.from_string): ~0.7 ms a call, 7,000 calls for 1,000 MMLU questions with 5 shots, about half of
lm-eval's request building. The same template string compiles to the same Template, so compile each string once.
Rendering (the output) is lm-eval's own, unchanged.
"""
from __future__ import annotations

from functools import lru_cache

import lm_eval.utils

STOCK_APPLY_TEMPLATE = lm_eval.utils.apply_template


@lru_cache(maxsize=4096)
def compiled(template: str):
    return lm_eval.utils.env.from_string(template)


def apply_template(template: str, doc: dict) -> str:
    return compiled(template).render(**doc)


def install() -> None:
    """Route lm-eval's apply_template (looked up as `utils.apply_template` at each call) through the compile cache."""
    lm_eval.utils.apply_template = apply_template
