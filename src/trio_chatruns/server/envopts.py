"""Command-line options from ``TRIO_CHATRUNS_*`` environment variables.

Every long option of ``trio-chatruns serve`` can also be set in the
environment: ``--max-active-runs 8`` is ``TRIO_CHATRUNS_MAX_ACTIVE_RUNS=8``
(the option's name without its dashes, upper case, ``-`` as ``_``, after
``TRIO_CHATRUNS_``). The command line wins over the environment, which wins
over the built-in default. A flag (``--expose-errors``, ``--no-access-log``)
takes ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any
case); an option that may be given several times takes a comma-separated
list. A value is checked as the option's own would be, and a bad one is an
error naming the variable (exit status 2). ``TRIO_CHATRUNS_API_KEY`` is read
by the command itself, so the key never shows as a default in ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

__all__ = ["ENV_PREFIX", "apply_environment", "env_name"]

ENV_PREFIX = "TRIO_CHATRUNS_"

# Read by the command itself (its value must never show as a --help default).
_READ_ELSEWHERE = {"--api-key"}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_name(option: str) -> str:
    """A long option's environment variable: ``--max-events`` → ``TRIO_CHATRUNS_MAX_EVENTS``."""
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def _long_option(action: argparse.Action) -> str | None:
    return next((o for o in action.option_strings if o.startswith("--")), None)


def apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Set the defaults of ``parser``'s long options from ``environ``; exits 2 on a bad value.

    Call before ``parser.parse_args``: the command line still overrides.
    """
    for action in parser._actions:
        option = _long_option(action)
        if option is None or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if option in _READ_ELSEWHERE:
            continue
        name = env_name(option)
        if name not in environ:
            continue
        text = environ[name]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                parser.error(
                    f"{name}={text!r}: expected one of 1, true, yes, on, 0, false, no, off"
                )
            on = word in _TRUE
            action.default = on if isinstance(action, argparse._StoreTrueAction) else not on
            continue
        convert = action.type if callable(action.type) else str
        try:
            if isinstance(action, argparse._AppendAction):
                value: object = [convert(part.strip()) for part in text.split(",") if part.strip()]
            else:
                value = convert(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{name}={text!r}: invalid value for {option}: {exc}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{name}={text!r}: {option} must be one of {', '.join(action.choices)}")
        action.default = value
