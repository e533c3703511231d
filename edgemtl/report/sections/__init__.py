"""Report sections that live in their own file: each says when it applies (`applies(manifest)`) and renders its HTML
(`render(manifest)`); report/html.py puts the applicable ones on the page in order."""
