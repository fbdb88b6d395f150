"""`report.html`: the Markdown report as one self-contained page (figures embedded), readable
from disk in any browser without a server.

    html = render_html(markdown_text, sweep_dir, title="rsam-dist report: demo")
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1b1f23; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f6f8fa; }
img { max-width: 100%; height: auto; border: 1px solid #eaecef; }
code { background: #f6f8fa; padding: 0.1rem 0.3rem; border-radius: 3px; }
"""

_IMAGE = re.compile(r'<img([^>]*?)src="([^"]+\.png)"')


def render_html(markdown_text: str, directory: Path, title: str) -> str:
    """The page; every local PNG the Markdown links is inlined as a data: URI."""
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])

    def inline(match: re.Match) -> str:
        attributes, source = match.groups()
        path = (directory / source).resolve()
        if not path.is_file() or directory.resolve() not in path.parents:
            return match.group(0)  # not one of the report's own figures: leave the link as it is
        encoded = base64.b64encode(path.read_bytes()).decode()
        return f'<img{attributes}src="data:image/png;base64,{encoded}"'

    body = _IMAGE.sub(inline, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
