"""Settings declared once: a config field with its help and its command-line flag.

A field of a catdog config section is written with :func:`option`: its
default, its help text and, where it differs from what the default implies,
its flag's name, type and default. :func:`flag_specs` lists the flags of a
config so ``catdog.cli`` defines them and copies parsed values back, and
:func:`document_options` writes the section's ``Attributes:`` doc from the
same help text. This module knows no absl and reads no flags.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from typing import Any, Callable, Optional, Sequence


#: Flag types an option can have (absl's DEFINE_<kind>).
FLAG_KINDS = ("string", "integer", "float", "boolean", "enum", "list")
_OPTION = "catdog_option"  # the key of an option in its field's metadata
_FIELD_DEFAULT = object()  # option(flag_default=...) not given: the field's default


def _unchanged(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting's help and command-line flag, as :func:`option` declares it.

    Attributes:
      help: the flag's help text and the field's doc.
      flag: the flag's name (in :func:`flag_specs`' results); as declared,
        ``True`` for the field's name or ``False`` for no flag.
      kind: the flag's type, one of :data:`FLAG_KINDS`.
      choices: the values of an ``"enum"`` flag, else ``None``.
      flag_default: the flag's default (``None``: unset until given).
      to_field: turns a flag value into the field's value.
      to_flag: turns a field value into the flag's value.
      section: the Config field holding the setting (``data``, ``model``,
        ``train``), filled in by :func:`flag_specs`.
      field: the setting's field name in that section, filled in likewise.
    """

    help: str
    flag: Any
    kind: str
    choices: Optional[tuple]
    flag_default: Any
    to_field: Callable[[Any], Any]
    to_flag: Callable[[Any], Any]
    section: str = ""
    field: str = ""


def option(default: Any, help: str, *,  # pylint: disable=redefined-builtin
           flag: Any = True, kind: Optional[str] = None,
           choices: Optional[Sequence[str]] = None, flag_default: Any = _FIELD_DEFAULT,
           to_field: Callable[[Any], Any] = _unchanged,
           to_flag: Callable[[Any], Any] = _unchanged) -> Any:
    """A config field together with its help text and its command-line flag.

    ``catdog.cli`` defines one absl flag per option and copies parsed flags
    into the config, so a new setting is this one field (plus its check in
    ``catdog.config.validate``).

    Args:
      default: the field's default.
      help: what the setting does: the flag's ``--help`` text and the field's
        entry in its class docstring.
      flag: ``True`` for a flag named as the field, a string for another flag
        name, ``False`` for a setting made by code and the stage presets only.
      kind: the flag's type, one of :data:`FLAG_KINDS`; by default ``"enum"``
        with ``choices``, else the type of ``default``.
      choices: the values of an ``"enum"`` flag.
      flag_default: the flag's default when it is not ``to_flag(default)``;
        ``None`` means the flag is unset until given, and an unset flag leaves
        the value of the stage preset.
      to_field: turns a flag value into the field's value.
      to_flag: turns a field value into the flag's value.

    Returns:
      A ``dataclasses.field`` carrying the option in its metadata.
    """
    if kind is None:
        if choices is not None:
            kind = "enum"
        else:
            kind = next((k for k, t in (("boolean", bool), ("integer", int), ("float", float),
                                        ("string", str)) if isinstance(default, t)), None)
    if kind not in FLAG_KINDS:
        raise TypeError(f"option({default!r}, {help!r}): give kind= one of {FLAG_KINDS}.")
    if (kind == "enum") != (choices is not None):
        raise TypeError(f"option({default!r}, {help!r}): choices= goes with kind='enum'.")
    if flag_default is _FIELD_DEFAULT:
        flag_default = to_flag(default)
    spec = Option(help=help, flag=flag, kind=kind,
                   choices=tuple(choices) if choices is not None else None,
                   flag_default=flag_default, to_field=to_field, to_flag=to_flag)
    return dataclasses.field(default=default, metadata={_OPTION: spec})


def option_help(field: dataclasses.Field) -> Optional[str]:
    """The help text of a field declared with :func:`option`, else ``None``."""
    spec = field.metadata.get(_OPTION)
    return spec.help if spec else None


def flag_specs(config: Any) -> list:
    """The :class:`Option` of every setting of ``config`` that has a flag.

    Args:
      config: a ``catdog.config.Config`` (or an instance of a subclass whose
        sections add options): a dataclass of section dataclasses. Flag
        defaults come from the field defaults, never from the instance's
        values.

    Returns:
      Options with their ``flag`` name, ``section`` and ``field`` filled in,
      in section and field order.
    """
    specs = []
    for section in dataclasses.fields(config):
        for field in dataclasses.fields(getattr(config, section.name)):
            spec = field.metadata.get(_OPTION)
            if spec is None or spec.flag is False:
                continue
            specs.append(dataclasses.replace(
                spec, flag=field.name if spec.flag is True else spec.flag,
                section=section.name, field=field.name))
    return specs


def document_options(cls):
    """Appends an ``Attributes:`` section built from the options' help to ``cls``' doc."""
    lines = [inspect.cleandoc(cls.__doc__ or cls.__name__), "", "Attributes:"]
    for field in dataclasses.fields(cls):
        lines += textwrap.wrap(f"{field.name}: {option_help(field) or ''}", width=76,
                               initial_indent="  ", subsequent_indent="    ")
    cls.__doc__ = "\n".join(lines) + "\n"
    return cls


def flag_error(flag: str, value: Any, expected: str) -> None:
    """Raises the ValueError of a bad setting, naming its flag and value."""
    raise ValueError(f"`--{flag}` {expected}. Received: {flag}={value!r}")
