"""The command-line reference, read off the argparse parser (`build_parser`): every command with its usage
and a row per argument. The documentation site renders it (`docs/gen_ref.py`), so it cannot drift from the
parser."""

from __future__ import annotations

import argparse

from racemarl.cli import build_parser


def subcommands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """{name: parser} of every `racemarl` subcommand, in the parser's order."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{subcommand: its one-line help}."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _argument(action: argparse.Action) -> tuple[str, str, str]:
    """(the argument as typed, its default, its help) for one table row."""
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0:
            name += f" {metavar or action.dest.upper()}"
    else:
        name = metavar or action.dest
        if action.nargs == "+":
            name += " ..."
    helptext = action.help or ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        helptext = (helptext + "; " if helptext else "") + "one of " + ", ".join(map(str, action.choices))
    if isinstance(action, argparse._AppendAction):
        helptext += " (repeatable)"
    default = action.default
    shown = "" if default in (None, [], False, argparse.SUPPRESS) or action.required else f"`{default}`"
    if action.required and action.option_strings:
        shown = "required"
    return f"`{name}`", shown, _cell(helptext)


def markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference as Markdown: a section per subcommand with its usage and a table of its arguments."""
    parser = parser or build_parser()
    helps = _help(parser)
    lines = []
    for name, sub in subcommands(parser).items():
        lines += [
            f"## `racemarl {name}`",
            "",
            _cell(helps.get(name, "")),
            "",
            "```text",
            " ".join(sub.format_usage().split()).removeprefix("usage: "),
            "```",
            "",
            "| argument | default | meaning |",
            "|---|---|---|",
        ]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            arg, default, helptext = _argument(action)
            lines.append(f"| {arg} | {default} | {helptext} |")
        lines.append("")
    return "\n".join(lines)
