"""The page's header: which model, for which target, by which edgemtl, on which host; and where the comparison is."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.fmt import DASH, compact, definitions, e, plain_text
from edgemtl.report.read import pick, section
from edgemtl.report.sections import Figures, TaskInput


def title(manifest: Mapping[str, Any]) -> str:
    """The page's title (also its <title>): the model it reports on."""
    model = section(manifest, "model")
    return f"edgemtl report: {model.get('path') or model.get('arch') or 'model'}"


def applies(manifest: Mapping[str, Any]) -> bool:
    return True


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    model, target, host = (section(manifest, key) for key in ("model", "target", "host"))
    sha = plain_text(model.get("sha256"))
    model_items = [
        ("Model", f"<code>{e(model.get('path') or DASH)}</code>"
                  + (f" <span class=\"dim\" title=\"{e(sha)}\">sha256 {e(sha[:12])}</span>" if sha else "")),
        ("Architecture", e(model.get("arch") or DASH)),
        ("Config", f"<code>{e(compact(model['config']))}</code>" if model.get("config") else None),
        ("Data", e(model["data"]) if model.get("data") else None),
        ("Input", e(_shape(section(model, "input").get("shape")))),
        ("Target", e(" · ".join(str(target[k]) for k in ("name", "flow") if target.get(k)) or DASH)
                   + (f"<br><span class=\"dim\">{e(target['description'])}</span>"
                      if target.get("description") else "")),
        ("edgemtl", e(manifest.get("edgemtl_version") or DASH)),
        ("Created", e(manifest.get("created") or DASH)),
    ]
    host_items = [(str(key), e(compact(value))) for key, value in host.items()]
    return (
        f"<header><h1>{e(title(manifest))}</h1>\n{definitions(model_items)}\n"
        + (f"<h2>Host</h2>\n{definitions(host_items)}" if host_items else "")
        + "<p class=\"dim\">Side by side with the bundles of other targets: <code>edgemtl report THIS_BUNDLE "
          "OTHER_BUNDLE ... -o comparison</code> writes comparison/comparison.html.</p>"
        + "</header>"
    )


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {"edgemtl_version": manifest.get("edgemtl_version"), "created": manifest.get("created"),
            "target": pick(section(manifest, "target"), ("name", "flow")),
            "model": pick(section(manifest, "model"), ("path", "sha256", "arch"))}


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _shape(shape: Any) -> str:
    return "×".join(str(dim) for dim in shape) if isinstance(shape, list) and shape else DASH
