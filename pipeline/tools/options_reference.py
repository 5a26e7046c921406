"""The configuration reference page (docs/configuration.md), made from the options'
one definition (`pipeline.options.OPTIONS`) as `--help` and the settings-file checks are:

    python -m pipeline.tools.options_reference > docs/configuration.md

A test fails when the page in the tree is not what this prints.
"""

from __future__ import annotations

from pipeline.options import GROUPS, OPTIONS, RUNNER_FLAGS, Option, shown_default

INTRO = """\
# Configuration reference

Every option is a flag (`--name=value`) and a key of the settings file
(`--settings_file`, JSON or YAML, keyed by the same names); a flag given on the command
line wins over the file, and the file over the default. A true/false option also takes
yes/no, on/off and 1/0; given without a value, it is true. `python -m pipeline --help`
prints the same list.

This page is made from the options' definition in `pipeline/options.py`
(`python -m pipeline.tools.options_reference`).
"""

_TYPES = {bool: "true/false", int: "whole number", str: "text", list: "list (repeatable)"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(option: Option) -> str:
    default = shown_default(option)
    return "| " + " | ".join((
        f"`--{option.name}`", _TYPES[option.kind],
        f"`{_cell(default)}`" if default is not None else "",
        ", ".join(f"`{choice}`" for choice in option.choices),
        _cell(option.help),
    )) + " |"


def reference() -> str:
    parts = [INTRO]
    for group in GROUPS:
        parts += [f"\n## {group.capitalize()}\n",
                  "| Option | Type | Default | Choices | What it does |",
                  "| --- | --- | --- | --- | --- |"]
        parts += [_row(option) for option in OPTIONS if option.group == group]
    parts += ["\n## Flags that go to Beam\n", RUNNER_FLAGS]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
