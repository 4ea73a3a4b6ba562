"""report.html: templates/report.html.j2 rendered with Jinja2 (autoescaped), the style sheet and plots inlined."""

from __future__ import annotations

import base64
from importlib.resources import files

TEMPLATES = "templates"  # inside this package; pyproject's package-data ships them with a non-editable install


def render_html(r: dict, images: dict[str, bytes | None]) -> str:
    import jinja2
    import markupsafe

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, TEMPLATES),
        # every piece of model or data text goes through {{ }}: answers can contain '<'
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    imgs = {k: base64.b64encode(v).decode("ascii") if v else None for k, v in images.items()}
    css = (files(__package__) / TEMPLATES / "report.css").read_text(encoding="utf-8")
    # Markup: the style sheet is ours, and autoescaping would turn its quotes into entities, which <style> keeps
    return env.get_template("report.html.j2").render(r=r, css=markupsafe.Markup(css), imgs=imgs)
