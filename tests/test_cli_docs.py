"""The command-line reference of the documentation site is read off the argparse parser."""

import argparse

from racemarl.cli import build_parser
from racemarl.cli import reference as ref


def test_every_command_and_option_is_in_the_reference():
    page = ref.markdown()
    commands = ref.subcommands()
    assert {"train", "config", "tasks", "eval", "sweep", "plot", "table", "export", "info"} <= set(commands)
    for name, sub in commands.items():
        assert f"## `racemarl {name}`" in page
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in page, f"racemarl {name} {option} is missing from the CLI reference"


def test_a_new_option_shows_up_with_its_help_and_default():
    parser = build_parser()
    train = ref.subcommands(parser)["train"]
    train.add_argument("--made-up", type=int, default=7, help="an option added after the reference was written")
    page = ref.markdown(parser)
    assert "| `--made-up MADE_UP` | `7` | an option added after the reference was written |" in page


def test_choices_and_repeatable_options_are_said():
    page = ref.markdown()
    assert "one of race, matd3, facmac, ea, merl" in page
    assert "(repeatable)" in page
    assert isinstance(build_parser(), argparse.ArgumentParser)
