"""Reading ``params.yaml``: UTF-8 text, parsed strictly (duplicate keys refused, YAML 1.2 numbers),
with a known preset and known sections at the top. Every failure is one `UserError` line naming the
file (and line, where there is one) and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .models import PRESETS, SECTIONS


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one mapping (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, mark: yaml.Mark):
        self.key, self.line = key, mark.line + 1
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=mark)


# libyaml's parser where PyYAML has it (params.yaml parses ~8x faster; every stage and every refused
# params file parses it), with the same Python constructor and resolvers: the same values and checks.
class ParamsLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """yaml.SafeLoader, stricter and closer to YAML 1.2 (what DVC's own parser reads):

    - a key repeated in one mapping is an error (`DuplicateKeyError`), not "the last one wins";
    - ``1e-2``, ``1E5``, ``-3e+4``, ``-.5`` are floats (YAML 1.1 wants a dot and a signed exponent,
      so PyYAML reads ``1e-2`` as the string '1e-2'). Quoted scalars stay strings.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, key_node.start_mark)
                    seen.add(key)
                except TypeError:  # unhashable: the base constructor reports it
                    pass
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+|[-+]\.[0-9]+)$"),
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with `ParamsLoader` (the one parser of params files)."""
    return yaml.load(text, Loader=ParamsLoader)


def read_params(path: str | Path = "params.yaml") -> tuple[str, dict[str, Any]]:
    """Parse params.yaml; return (preset, raw mapping). Checks the top-level shape only."""
    path = Path(path)
    text = _params_text(path)
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as exc:
        raise UserError(
            f"{path} line {exc.line}: duplicate key {exc.key!r} (each key may appear once in a mapping)"
        ) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, other controls)
        # its first occurrence is where the reader stopped (libyaml's position counts bytes)
        line = text.count("\n", 0, max(text.find(chr(exc.character)), 0)) + 1
        binary = "; a binary file?" if exc.character in _CONTROL else ""
        raise UserError(
            f"{path}: line {line} is not valid YAML (character #x{exc.character:04x} is not allowed{binary})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    allowed = {"preset", *SECTIONS}
    for key in raw:
        if key not in allowed:
            raise UserError(f"{path}: unknown section '{key}' (allowed: {', '.join(sorted(allowed))})")
    preset = raw.get("preset")
    if preset not in PRESETS:
        raise UserError(f"{path}: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return preset, raw


_CONTROL = {*range(0x20), 0x7F} - {0x09, 0x0A, 0x0D}  # characters no text file of ours holds
_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}  # UTF-32 LE starts like UTF-16 LE


def _params_text(path: Path) -> str:
    """The file's text, which must be UTF-8 (what DVC reads it as, too)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (run from the repository root or pass --params)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a params file: pass --params a YAML file") from None
    except OSError as exc:
        raise UserError(
            f"{path}: cannot be read ({exc.strerror or exc}): fix its permissions or pass --params another file"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bom = next((name for bom, name in _BOMS.items() if data.startswith(bom)), None)
        guess = (
            f"{bom}?" if bom else "a binary file?" if any(b in _CONTROL for b in data[:4096]) else "another encoding?"
        )
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; {guess}): "
            "save it as UTF-8 YAML"
        ) from None
