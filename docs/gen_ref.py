"""Writes the generated reference pages at build time (mkdocs-gen-files runs it): the configuration reference
from the typed schema and its field docstrings, the CLI reference from the argparse parser. Nothing here is
edited by hand, so the pages cannot drift from the code."""

import mkdocs_gen_files

from racemarl.cli import reference as cli_reference
from racemarl.config import reference as config_reference

CONFIG_INTRO = """# Configuration reference

Every key of the run configuration, generated from `racemarl/config/schema.py`: its type, its default, what
validation allows, and the docstring written under the field. Set a key with `--set KEY=VALUE` (dotted keys
for nested ones, e.g. `--set learner.batch_size=128`), in a YAML preset given with `--config`, or from Python
with `racemarl.make_config(..., overrides={...})`. `racemarl config [--config F] [--set k=v]` prints the
resolved config. An unknown key, a wrong type or a value out of range is a one-line error (exit status 2)
before any work; every number must also be finite.

Runs saved before a key existed take the value that reproduces their old behaviour
(`racemarl.config.LEGACY_DEFAULTS`), not the default below.

"""

CLI_INTRO = """# CLI reference

Every `racemarl` command and argument, generated from the argparse parser (`racemarl/cli/__init__.py`).
`racemarl COMMAND --help` prints the same in a terminal; `racemarl --version` prints the version. Errors that
are the user's to fix print one line and exit with status 2.

"""

with mkdocs_gen_files.open("reference/config.md", "w") as f:
    f.write(CONFIG_INTRO + config_reference.markdown())

with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write(CLI_INTRO + cli_reference.markdown())
