"""Importing an optional dependency, with an error that says what actually went wrong.

"peft is not installed" was printed while peft *was* installed: its import failed inside
transformers (issue 12). An ImportError has two causes that need different fixes: the package is
missing (install it), or it is installed and raised while importing (a version clash; reinstalling
the same thing does not help). The message names which, and quotes the underlying error.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def describe_import_failure(module: str, exc: BaseException, *, needed_for: str, install: str) -> str:
    """`needed_for` says what wanted the module ("lora.enabled is true"); `install` how to get it."""
    top = module.partition(".")[0]
    try:
        present = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        return f"{needed_for} but {top} is not installed: {install}"
    return (f"{needed_for}; {top} is installed but importing {module} failed with "
            f"{type(exc).__name__}: {exc}. Fix that error first (often a version clash between {top} and "
            f"its dependencies: compare `pip list` with requirements/ci.lock); to reinstall: {install}")


def import_optional(module: str, *, needed_for: str, install: str) -> ModuleType:
    """importlib.import_module(module), or an ImportError from describe_import_failure."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(describe_import_failure(module, exc, needed_for=needed_for, install=install)) from exc
