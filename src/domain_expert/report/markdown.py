"""report.md: templates/report.md.j2 rendered with Jinja2 from the view model report.html is rendered from; the
plots are PNG files next to it.

Every value the template prints is escaped for Markdown, as report.html's are for HTML: HTML entities (Markdown
viewers render inline HTML), Markdown syntax, and line breaks as <br> so that text cannot break a table row. Jinja's
autoescaping does this through `finalize`: a value comes out as `Markup`, which the autoescaper and the `safe` filter
leave alone, so the template marks what is already Markdown with `|safe`.
"""

from __future__ import annotations

import re
from typing import Any

from domain_expert.report.html import TEMPLATES
from domain_expert.report.plots import ITEM_DIFFS_PNG, LOSS_PNG


def md_escape(text: Any) -> str:
    """Model/data text as Markdown that shows it verbatim: HTML entities, Markdown syntax, one line (table-safe)."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\`*_\[\]|#~])", r"\\\1", s)
    return s.replace("\r\n", "\n").replace("\n", "<br>")


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)


def render_md(r: dict, images: dict[str, bytes | None]) -> str:
    import jinja2
    import markupsafe

    def finalize(v: Any) -> markupsafe.Markup:
        return v if isinstance(v, markupsafe.Markup) else markupsafe.Markup(md_escape(v))

    def code_fence(text: str) -> markupsafe.Markup:
        """A fence the block's own backticks cannot close."""
        return markupsafe.Markup("`" * max(3, _longest_backtick_run(text) + 1))

    def code(text: Any) -> markupsafe.Markup:
        """An inline code span (shown verbatim, so not escaped) that the text's own backticks cannot close."""
        s = " ".join(str(text).splitlines())
        pad = " " if "`" in s else ""
        tick = "`" * (_longest_backtick_run(s) + 1)
        return markupsafe.Markup(f"{tick}{pad}{s}{pad}{tick}")

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, TEMPLATES),
        autoescape=True,  # with finalize: Markdown escaping, see the module's docstring
        finalize=finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(code=code, code_fence=code_fence)
    plots = {
        key: markupsafe.Markup(name) if images.get(key) else None
        for key, name in (("loss", LOSS_PNG), ("item_diffs", ITEM_DIFFS_PNG))
    }
    return env.get_template("report.md.j2").render(r=r, plots=plots)
