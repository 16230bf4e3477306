"""The configuration reference of the documentation site is read off the schema: every key must have a
docstring, and the generated page must show every key with its default."""

from dataclasses import dataclass, field

import pytest

from racemarl.config import Config, valid_keys
from racemarl.config import reference as ref


def test_every_config_key_has_a_docstring():
    missing = ref.undocumented_keys()
    assert not missing, (
        f"config keys without a docstring in racemarl/config/schema.py: {', '.join(missing)}; "
        "write one as a string literal on the line under the field"
    )


@dataclass
class _Inner:
    documented: int = 1
    """Has a docstring."""
    bare: float = 0.5


@dataclass
class _Outer:
    name: str = "x"
    """Has one too."""
    inner: _Inner = field(default_factory=_Inner)
    forgotten: bool = False


def test_the_check_fails_on_a_key_without_a_docstring():
    # the same check, on a schema with two undocumented keys, one of them in a nested section
    assert ref.undocumented_keys(_Outer) == ["inner.bare", "forgotten"]


def test_a_comment_is_not_a_docstring():
    @dataclass
    class Commented:
        a: int = 1
        # a comment under the field documents nothing
        b: int = 2
        """b's docstring."""

    assert ref.field_docstrings(Commented) == {"b": "b's docstring."}


def test_the_reference_lists_every_key_in_the_schemas_order():
    docs = ref.key_docs()
    assert [d.key for d in docs] == valid_keys()
    page = ref.markdown()
    for d in docs:
        assert f"| `{d.key}` |" in page


def test_types_defaults_and_ranges_come_from_the_schema():
    by_key = {d.key: d for d in ref.key_docs()}
    cfg = Config()
    assert by_key["learner.batch_size"].default == cfg.learner.batch_size == 256
    assert by_key["net.critic_hidden"].default == [400, 300]
    assert by_key["race.operators"].type == "'agent' | 'row'"
    assert by_key["env.max_episode_steps"].type == "int | None"
    # from Config.validate's messages and the _RANGES table
    assert "in [0, 1]" in by_key["learner.gamma"].constraint
    assert ">= 1" in by_key["net.encoder_hidden"].constraint
    assert "> 0" in by_key["learner.lr_actor"].constraint
    assert "one of 'hard', 'soft'" in by_key["discrete.target_update"].constraint


@pytest.mark.parametrize("key", ["race.vmm_beta", "device", "rollout.backend"])
def test_the_docstring_is_the_fields_own(key):
    page = ref.markdown()
    row = next(line for line in page.splitlines() if line.startswith(f"| `{key}` |"))
    doc = {d.key: d.doc for d in ref.key_docs()}[key]
    assert doc and doc.replace("|", "\\|") in row
