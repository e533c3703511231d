"""The bundle manifest's typed vocabulary: one provenance shape and one figure shape for every number.

A hardware team reads a number only together with what kind of number it is. Before this module the bundle said so
as a string in one place ("measured (host gcc)"), free text in another and an object in a third; now every
provenance is one `Provenance` object and every number that carries one is a `Figure`. `provenance_of` reads any of
the older shapes, so bundles written before the change still open in `edgemtl report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ProvenanceKind = Literal["measured", "emulated", "simulated", "estimated", "static", "evaluated"]

KINDS: dict[str, str] = {
    "measured": "timed on a real CPU or board: the device, runtime, runs, median and p90 are given",
    "emulated": "timed under an emulator (qemu): proves the path works, says nothing about the device's speed",
    "simulated": "counted by a simulator (qemu retired instructions, HLS C simulation): not a latency",
    "estimated": "from an analytical model, nothing was run (GAP9 cycle model, FPGA roofline, FINN)",
    "static": "fixed at compile time and exact (the size of a file, a static memory plan, a MAC count)",
    "evaluated": "a task metric computed on labelled samples with the named runtime",
}

# first words the older free-text provenances start with, and the kind each means
_LEGACY_WORDS: dict[str, ProvenanceKind] = {
    "measured": "measured", "emulated": "emulated", "simulated": "simulated", "estimated": "estimated",
    "estimate": "estimated", "predicted": "estimated", "static": "static", "counted": "static",
    "evaluated": "evaluated", "published": "measured",
}


class Provenance(BaseModel):
    """What kind of number a figure is, who produced it, and anything a reader needs to weigh it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ProvenanceKind
    source: str | None = None   # the tool or module that produced it (e.g. "ONNX Runtime 1.23", "hls4ml csim")
    detail: str | None = None   # the conditions: host, samples, assumptions
    device: str | None = None   # where it ran, when it ran somewhere

    def text(self) -> str:
        """One line for a table cell or a tooltip: `kind (detail; source)`."""
        extra = "; ".join(part for part in (self.detail, self.source) if part)
        return f"{self.kind} ({extra})" if extra else self.kind

    def to_dict(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


class Figure(BaseModel):
    """A number with its unit and provenance: the one shape every reported figure has in manifest.json."""

    model_config = ConfigDict(extra="allow")

    value: float
    unit: str
    provenance: Provenance


def prov(kind: ProvenanceKind, source: str | None = None, detail: str | None = None,
         device: str | None = None) -> dict[str, str]:
    """A provenance object as manifest JSON (validated: an unknown kind is a bug, not data)."""
    return Provenance(kind=kind, source=source, detail=detail, device=device).to_dict()


def figure(value: float, unit: str, kind: ProvenanceKind, source: str | None = None, detail: str | None = None,
           device: str | None = None, **extra: Any) -> dict[str, Any]:
    """A figure as manifest JSON: value, unit, provenance object, and any extra fields (runs, p90, ...)."""
    return {"value": value, "unit": unit, **{k: v for k, v in extra.items() if v is not None},
            "provenance": prov(kind, source, detail, device)}


def provenance_of(raw: Any, default: ProvenanceKind | None = None) -> Provenance | None:
    """Read any provenance a bundle holds (an object, or the older "kind (detail)" string) as one `Provenance`.

    None when there is none and no default; an unknown first word keeps the whole text as detail under the
    default kind (or "estimated", the most careful reading), so nothing a bundle says is dropped."""
    if isinstance(raw, Provenance):
        return raw
    if isinstance(raw, Mapping):
        kind = str(raw.get("kind") or default or "estimated")
        fields = {key: str(raw[key]) for key in ("source", "detail", "device") if raw.get(key) not in (None, "")}
        if kind not in KINDS:
            fields["detail"] = "; ".join(part for part in (kind, fields.get("detail")) if part)
            kind = default or "estimated"
        return Provenance(kind=kind, **fields)  # type: ignore[arg-type]
    if raw is None or str(raw).strip() == "":
        return Provenance(kind=default) if default else None
    text = str(raw).strip()
    word, _, rest = text.partition(" ")
    kind_word = word.rstrip(":,;").lower()
    if kind_word in _LEGACY_WORDS:
        detail = rest.strip()
        if detail.startswith("(") and detail.endswith(")"):
            detail = detail[1:-1]
        return Provenance(kind=_LEGACY_WORDS[kind_word], detail=detail or None)
    return Provenance(kind=default or "estimated", detail=text)


def provenance_kind(raw: Any, default: str = "unlabelled") -> str:
    """The kind word of any provenance shape, for a badge or a plot's hatching."""
    found = provenance_of(raw)
    return found.kind if found else default


def provenance_text(raw: Any, default: str = "") -> str:
    """One readable line for any provenance shape (never a dict repr)."""
    found = provenance_of(raw)
    return found.text() if found else default
