"""vllm 0.33.0 utils/func_utils.py:46-119: the lru_cache the project's engine clears on release."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache


@lru_cache
def _supports_kw(
    callable: Callable[..., object],
    kw_name: str,
    *,
    requires_kw_only: bool = False,
    allow_var_kwargs: bool = True,
) -> bool:
    """Internal cached implementation of supports_kw."""
    params = inspect.signature(callable).parameters
    if not params:
        return False
    param_val = params.get(kw_name)
    passable_kw_types = {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                         inspect.Parameter.KEYWORD_ONLY}
    if param_val:
        is_sig_param = param_val.kind in passable_kw_types
        # We want kwargs only, but this is passable as a positional arg
        if requires_kw_only and is_sig_param and param_val.kind != inspect.Parameter.KEYWORD_ONLY:
            return False
        if (requires_kw_only and param_val.kind == inspect.Parameter.KEYWORD_ONLY) or (
            not requires_kw_only and is_sig_param
        ):
            return True
    if allow_var_kwargs:
        last = params[next(reversed(params))]
        return last.kind == inspect.Parameter.VAR_KEYWORD and last.name != kw_name
    return False


def supports_kw(
    callable: Callable[..., object],
    kw_name: str,
    *,
    requires_kw_only: bool = False,
    allow_var_kwargs: bool = True,
) -> bool:
    if hasattr(callable, "__func__"):
        callable = callable.__func__
    return _supports_kw(callable, kw_name, requires_kw_only=requires_kw_only, allow_var_kwargs=allow_var_kwargs)
