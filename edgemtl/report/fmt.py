"""HTML pieces every report page and section shares: escaping, human units, number cells, tables, provenance
badges, links into the bundle, strict JSON.

Every string from a manifest goes through `e` (model and task names are user input), and every provenance is read
through edgemtl.manifest (`provenance_of`), which takes both the object and the older string shape, so a page never
shows a dict repr.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from edgemtl.manifest import provenance_of
from edgemtl.report.read import number

DASH = "—"


def e(value: Any) -> str:
    """`value` as escaped HTML text (None as nothing)."""
    return escape("" if value is None else str(value), quote=True)


def plain_text(value: Any) -> str:
    """Text for the page from any manifest value: a mapping or a list as words, never a repr (a provenance goes
    through `provenance_text` instead)."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        lead = " ".join(str(value[key]) for key in ("kind", "source") if value.get(key))
        rest = "; ".join(f"{key} {plain_text(item)}" for key, item in value.items() if key not in ("kind", "source"))
        return ", ".join(part for part in (lead, rest) if part)
    if isinstance(value, (list, tuple)):
        return "; ".join(plain_text(item) for item in value)
    return str(value)


def human_count(value: float) -> str:
    """1234567 -> '1.23 M': counts of MACs and parameters at a glance."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale * 0.9995:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def human_bytes(value: float) -> str:
    """35328 -> '34.5 KiB': binary units, as memory maps and linker scripts use."""
    for unit, scale in (("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0)):
        if abs(value) >= scale * 0.9995:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def human_ms(value: float) -> str:
    """0.41 -> '0.41 ms', sub-0.1 ms in µs and seconds past 1000 ms, three significant digits."""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g} s"
    if 0 < abs(value) < 0.1:
        return f"{value * 1000:.3g} µs"
    return f"{value:.3g} ms"


def human_seconds(value: float) -> str:
    """Step durations: '0.12 s', '3.1 s', '2 min 5 s'."""
    if value >= 60:
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes} min {seconds} s"
    return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"


def human_error(value: float) -> str:
    """2.1e-06 -> '2.1e-6': an error's magnitude is what matters."""
    if value == 0:
        return "0"
    mantissa, _, exponent = f"{value:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def short(value: float | None) -> str:
    """A metric value at four significant digits, or a dash."""
    return f"{value:.4g}" if value is not None else DASH


def prov_badge(raw: Any, default: str = "") -> str:
    """A provenance tag: its kind, coloured, with the provenance in words in its tooltip; `default` (a provenance
    in either shape) stands in when `raw` is missing."""
    found = provenance_of(raw) or provenance_of(default)
    kind, full = (found.kind, found.text()) if found else ("unlabelled", "unlabelled")
    return f" <span class=\"prov prov-{kind}\" title=\"{e(full)}\">{e(kind)}</span>"


def prov_words(raw: Any, default: str) -> str:
    """A provenance tag in full words, coloured by its kind (`default`, a provenance in either shape, when `raw` is
    missing)."""
    found = provenance_of(raw) or provenance_of(default)
    kind, words = (found.kind, found.text()) if found else ("unlabelled", default)
    return f"<span class=\"prov prov-{kind}\">{e(words)}</span>"


def figures_html(plots: tuple[tuple[str, Callable[[Mapping[str, Any]], bytes | None]], ...],
                 data: Mapping[str, Any]) -> list[str]:
    """Each (caption, plot) drawn from `data` as an embedded PNG (a data URI: the page loads nothing external);
    a plot with nothing to draw (None) is left out."""
    found = []
    for caption, plot in plots:
        png = plot(data)
        if png is not None:
            uri = base64.b64encode(png).decode("ascii")
            found.append(f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{uri}\">"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    return found


def number_cell(value: Any, fmt: Callable[[float], str], provenance: Any = None, warning: str | None = None) -> str:
    """A right-aligned number; with `provenance`, its badge; with `warning`, a mark whose tooltip says why."""
    parsed = number(value)
    if parsed is None:
        return f"<td class=\"n\">{DASH}</td>"
    badge = prov_badge(provenance) if provenance else ""
    flag = f" <span class=\"fail\" title=\"{e(warning)}\">⚠</span>" if warning else ""
    return f"<td class=\"n\">{e(fmt(parsed))}{badge}{flag}</td>"


def table(title: str, headers: tuple[str, ...], rows: list[str]) -> str:
    """A titled table of pre-rendered rows."""
    head = "".join(f"<th>{e(header)}</th>" for header in headers)
    body = "\n".join(rows)
    return f"<h2>{e(title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def definitions(items: list[tuple[str, str | None]]) -> str:
    """A definition list of (label, HTML value); items without a value are left out."""
    pairs = "".join(f"<dt>{e(label)}</dt><dd>{value}</dd>" for label, value in items if value is not None)
    return f"<dl>{pairs}</dl>"


def artifact_link(path: str, bundle_dir: Path | None) -> str:
    """A link relative to the report, percent-quoted so no manifest path can become a `javascript:` URL; a file the
    bundle lacks is flagged."""
    posix = PurePosixPath(path.replace("\\", "/"))
    relative: PurePosixPath | None = posix
    if posix.is_absolute():
        relative = None
        if bundle_dir is not None:
            try:
                relative = PurePosixPath(Path(path).resolve().relative_to(Path(bundle_dir).resolve()).as_posix())
            except ValueError:
                relative = None
    if relative is None:
        return f"<code>{e(path)}</code> <span class=\"dim\">(outside the bundle)</span>"
    missing = bundle_dir is not None and not (Path(bundle_dir) / relative).exists()
    flag = " <span class=\"fail\">(missing)</span>" if missing else ""
    return f"<a href=\"{e(quote(str(relative), safe='/'))}\"><code>{e(relative)}</code></a>{flag}"


def compact(value: Any) -> str:
    """A mapping or list as one line of JSON, anything else as its words."""
    if isinstance(value, (Mapping, list)):
        return json.dumps(jsonable(value), sort_keys=True, separators=(", ", ": "))
    return plain_text(value) or DASH


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become null and unknown types their text, so report.json always parses."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
