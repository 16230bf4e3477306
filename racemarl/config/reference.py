"""The configuration reference, read off the schema itself: every dotted key with its type, default, allowed
range and the docstring written under its field in `schema.py`. The documentation site renders it
(`docs/gen_ref.py`), and `tests/test_config_docs.py` fails on a key without a docstring, so the reference cannot
drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Literal

from racemarl.config import schema
from racemarl.config.schema import Config, _field_types


@dataclass(frozen=True)
class KeyDoc:
    """One config key as the reference shows it."""

    key: str
    """Dotted key, as `--set` takes it (`learner.batch_size`)."""
    type: str
    """The annotation, written as in the schema (`int`, `list[int]`, `'hard' | 'soft'`)."""
    default: Any
    """The default value (what `racemarl config` prints without a preset)."""
    constraint: str
    """What validation demands of the value (empty when any value of the type is accepted)."""
    doc: str
    """The field's docstring, on one line (empty when it has none)."""


def field_docstrings(cls: type) -> dict[str, str]:
    """{field name: docstring} of a dataclass: the string literal written right under each field, as in
    `schema.py`. Fields without one are missing from the result."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            out[node.target.id] = " ".join(after.value.value.split())
    return out


def section_docstring(cls: type) -> str:
    """The class docstring of a section, on one line ('' when it has none or only the dataclass default)."""
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.split())


def type_name(tp: Any) -> str:
    """An annotation written for a reader: `int | None`, `list[int]`, `'agent' | 'row'`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None and origin not in (list, dict):  # a union
        return " | ".join(type_name(t) for t in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(t) for t in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _validation_messages() -> dict[str, list[str]]:
    """{dotted key: the conditions `Config.validate` states for it}, read from the messages of its checks
    (those that begin with the key, e.g. "learner.gamma must be in [0, 1]")."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Config.validate)))
    keys = set(schema.valid_keys())
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text = str(node.values[0].value)
        else:
            continue
        first, _, rest = text.partition(" ")
        if first in keys and rest.startswith("must ") and not rest.endswith(" "):  # a whole message
            out.setdefault(first, []).append(rest)
    return out


def _constraint(key: str, tp: Any, messages: dict[str, list[str]]) -> str:
    parts = list(messages.get(key, []))
    for name, low, inclusive in schema._RANGES:
        if name == key:
            bound = f"{'>=' if inclusive else '>'} {low:g}"
            parts.append(f"each width {bound}" if typing.get_origin(tp) is list else bound)
    if typing.get_origin(tp) is Literal and not parts:
        parts.append("one of " + ", ".join(repr(v) for v in typing.get_args(tp)))
    if tp is float or float in typing.get_args(tp):
        parts.append("finite")
    return "; ".join(dict.fromkeys(p.removeprefix("must be ") for p in parts))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def sections(cls: type = Config) -> list[tuple[str, type]]:
    """('', Config) and then (name, class) for every nested section, in the schema's order."""
    out: list[tuple[str, type]] = [("", cls)]
    for name, tp in _field_types(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += [(f"{name}.{sub}" if sub else name, sub_cls) for sub, sub_cls in sections(tp)]
    return out


def key_docs(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every key of `cls` (nested sections included, in the schema's order) with its documentation."""
    messages = _validation_messages() if cls is Config else {}
    return _key_docs(cls, prefix, messages)


def _key_docs(cls: type, prefix: str, messages: dict[str, list[str]]) -> list[KeyDoc]:
    docs, types = field_docstrings(cls), _field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _key_docs(tp, f"{prefix}{f.name}.", messages)
            continue
        key = prefix + f.name
        out.append(KeyDoc(key, type_name(tp), _default(f), _constraint(key, tp, messages), docs.get(f.name, "")))
    return out


def undocumented_keys(cls: type = Config) -> list[str]:
    """The dotted keys of `cls` whose field has no docstring (the reference would show nothing for them)."""
    return [k.key for k in key_docs(cls) if not k.doc.strip()]


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(cls: type = Config) -> str:
    """The reference as Markdown: one table per section, a row per key."""
    by_section: dict[str, list[KeyDoc]] = {}
    for k in key_docs(cls):
        by_section.setdefault(k.key.rpartition(".")[0], []).append(k)
    lines = []
    for name, section_cls in sections(cls):
        rows = by_section.get(name, [])
        if not rows:
            continue
        title = f"`{name}`" if name else "Top-level keys"
        lines += [f"## {title}", ""]
        intro = section_docstring(section_cls)
        if intro and section_cls is not cls:
            lines += [intro, ""]
        lines += ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
        for k in rows:
            lines.append(
                f"| `{k.key}` | `{_cell(k.type)}` | `{_cell(_yaml_value(k.default))}` | "
                f"{_cell(k.constraint)} | {_cell(k.doc)} |"
            )
        lines.append("")
    return "\n".join(lines)
