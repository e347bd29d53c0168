"""Shared by the CLIs: library errors (DsocrError) become click errors (exit code 1)."""
from __future__ import annotations

import functools

import click

from .errors import DsocrError


def library_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DsocrError as e:
            raise click.ClickException(str(e)) from e

    return wrapper
