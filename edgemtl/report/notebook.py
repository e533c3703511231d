"""Interactive plotly figures in the project's notebooks (notebooks/), with nothing loaded from the network.

Bundles are read on machines without internet access, as report.html is (a CSP forbids anything external there).
plotly's own "notebook" renderer embeds plotly.js but adds a MathJax <script> from a CDN to every figure, and its
"notebook_connected" / "cdn" modes load plotly.js itself from one. `use_offline_plotly` registers a renderer that
embeds plotly.js once per kernel (plotly's notebook initialisation) and gives each figure as plotly's JSON mimetype
(drawn by the JupyterLab / Notebook 7 / VS Code extension, which carries its own plotly.js) plus an HTML fallback
that loads nothing. plotly.js is embedded in the output of the cell that calls `use_offline_plotly`, not in the first
figure's: a figure redrawn inside an `ipywidgets.Output` (cleared on every redraw) would take the library with it.

plotly is imported here only when a notebook calls this: it comes with the test extra (`make setup`), not with the
package's own dependencies.
"""

from __future__ import annotations

from typing import Any

OFFLINE_RENDERER = "edgemtl_offline"


def use_offline_plotly() -> str:
    """Make `fig.show()` in this kernel render offline (see the module docstring); returns the renderer string set
    as plotly's default."""
    import plotly.io as pio
    from plotly.io.base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        """plotly's NotebookRenderer (plotly.js embedded at activation) whose figures load no MathJax."""

        activated = False

        def activate(self) -> None:
            """Embed plotly.js once: here, not again when plotly activates the new default on the first figure."""
            if not self.activated:
                super().activate()
                self.activated = True

        def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, str]:
            html = pio.to_html(fig_dict, config=self.config, auto_play=self.auto_play, include_plotlyjs=False,
                               include_mathjax=False, full_html=False, animation_opts=self.animation_opts,
                               default_width="100%", default_height=525, validate=False)
            return {"text/html": html}

    renderer = OfflineNotebookRenderer()
    pio.renderers[OFFLINE_RENDERER] = renderer
    pio.renderers.default = f"plotly_mimetype+{OFFLINE_RENDERER}"
    if _in_ipython():
        renderer.activate()
    return pio.renderers.default


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None
