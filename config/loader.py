"""Load and validate brand files, with errors that name the file, the field and the line.

`tomllib` keeps no positions, so `locate()` scans the source for table headers and keys and maps a
field path such as `campaigns[0].products[1].stock` to the line that defines it (or, for a missing
field, to the header of the table that should hold it).

Campaign ids are global in the database, so `check_brands()` also refuses two files that define
the same campaign id; `flashtag check-config` and the processes load files through it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from config.brand import Brand, FieldRuleError

Path_ = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\- "']+?)\s*=""")
_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")
# Brand files are strict about types (config.brand); say how to write the value in TOML.
_TYPE_HINTS = {
    "int_type": "must be a TOML integer: no quotes, no decimal point, not true/false",
    "float_type": "must be a TOML number: no quotes, not true/false",
    "bool_type": "must be true or false, without quotes",
}
# Windows editors save UTF-8 with a byte-order mark, which TOML does not allow.
_BOM = "\ufeff"


@dataclass(frozen=True)
class FieldError:
    """One problem in a brand file."""

    file: str
    field: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '<file>'}: {self.message}"


class BrandFileError(Exception):
    """A brand file failed to load; `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _split_key(dotted: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', dotted)
    return [a or b or c for a, b, c in parts]


def _index_lines(source: str) -> dict[Path_, int]:
    """Map every table, array-of-tables element and key in `source` to its line number."""
    lines: dict[Path_, int] = {}
    counters: dict[Path_, int] = {}
    table: Path_ = ()
    in_multiline: str | None = None
    for number, raw in enumerate(source.splitlines(), start=1):
        if in_multiline:
            if in_multiline in raw:
                in_multiline = None
            continue
        header = _HEADER.match(raw)
        if header:
            names = _split_key(header.group(2))
            path: list[str | int] = []
            for i, name in enumerate(names):
                path.append(name)
                prefix = tuple(path)
                if prefix in counters and not (i == len(names) - 1 and header.group(1) == "[["):
                    path.append(counters[prefix] - 1)
            if header.group(1) == "[[":
                key = tuple(path)
                counters[key] = counters.get(key, 0) + 1
                path.append(counters[key] - 1)
            table = tuple(path)
            lines.setdefault(table, number)
            continue
        assignment = _KEY.match(raw)
        if assignment:
            keys = _split_key(assignment.group(1))
            for end in range(1, len(keys) + 1):  # `a.b = 1` also defines table `a`
                lines.setdefault(table + tuple(keys[:end]), number)
            for quote in ('"""', "'''"):
                if raw.count(quote) == 1:
                    in_multiline = quote
    return lines


def locate(source: str, path: Path_) -> int | None:
    """The line defining `path`, or of its closest enclosing table or key."""
    index = _index_lines(source)
    for end in range(len(path), -1, -1):
        if path[:end] in index:
            return index[path[:end]]
    return None


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_errors(file: str, source: str, error: ValidationError) -> list[FieldError]:
    found: list[FieldError] = []
    for item in error.errors():
        path: Path_ = tuple(p for p in item["loc"] if not isinstance(p, str) or "[" not in p)
        message = item["msg"]
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldRuleError):
            path = path + cause.path
            message = str(cause)
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] in _TYPE_HINTS:
            message = f"{_TYPE_HINTS[item['type']]} (got {item['input']!r})"
        found.append(FieldError(file, format_path(path), locate(source, path), message))
    return found


def parse_brand(source: str, file: str = "<brand>") -> Brand:
    """Validate brand-file text; raise `BrandFileError` listing every problem.

    A leading UTF-8 byte-order mark is ignored.
    """
    source = source.removeprefix(_BOM)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.search(str(exc))
        line = int(match.group(1)) if match else None
        raise BrandFileError([FieldError(file, "", line, f"invalid TOML: {exc}")]) from exc
    try:
        return Brand.model_validate(data)
    except ValidationError as exc:
        raise BrandFileError(_pydantic_errors(file, source, exc)) from exc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrandFileError([FieldError(str(path), "", None, f"cannot read: {exc}")]) from exc


def load_brand(path: str | Path) -> Brand:
    """Read and validate one brand file."""
    path = Path(path)
    return parse_brand(_read(path), str(path))


@dataclass(frozen=True)
class LoadedBrand:
    """A brand file that loaded and clashes with no other file."""

    path: Path
    brand: Brand


def _claim_campaign_ids(
    owners: dict[str, str], path: Path, source: str, brand: Brand
) -> list[FieldError]:
    """Record this file's campaign ids in `owners` (id -> "file:line"); report ids already taken."""
    clashes: list[FieldError] = []
    for index, campaign in enumerate(brand.campaigns):
        field = ("campaigns", index, "id")
        line = locate(source.removeprefix(_BOM), field)
        here = f"{path}:{line}" if line else str(path)
        if campaign.id in owners:
            clashes.append(
                FieldError(
                    str(path),
                    format_path(field),
                    line,
                    f"campaign id {campaign.id!r} is also defined in {owners[campaign.id]} "
                    "(campaign ids are shared by every brand in the database)",
                )
            )
        else:
            owners[campaign.id] = here
    return clashes


def check_brands(paths: Sequence[str | Path]) -> tuple[list[LoadedBrand], list[FieldError]]:
    """Load several brand files and check them against each other.

    Returns the brands that loaded cleanly and every problem found, in file order: each file's
    own errors, and campaign ids that an earlier file already uses. A file named twice (a path
    and a glob that matches it) is loaded once.
    """
    loaded: list[LoadedBrand] = []
    errors: list[FieldError] = []
    owners: dict[str, str] = {}
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            source = _read(path)
            brand = parse_brand(source, str(path))
        except BrandFileError as exc:
            errors.extend(exc.errors)
            continue
        clashes = _claim_campaign_ids(owners, path, source, brand)
        errors.extend(clashes)
        if not clashes:
            loaded.append(LoadedBrand(path, brand))
    return loaded, errors


def load_brands(paths: Sequence[str | Path]) -> list[Brand]:
    """Load several brand files; errors from all of them are reported together."""
    loaded, errors = check_brands(paths)
    if errors:
        raise BrandFileError(errors)
    return [item.brand for item in loaded]
