"""docs/manifest.md is the current output of its generator, so the documented manifest is the validated one."""

from __future__ import annotations

from pathlib import Path

from edgemtl.flows.manifest_docs import render_markdown

DOC = Path(__file__).parents[1] / "docs" / "manifest.md"


def test_docs_manifest_md_is_generated_from_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(), (
        "docs/manifest.md is stale: python -m edgemtl.flows.manifest_docs > docs/manifest.md")
