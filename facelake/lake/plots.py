"""PNG plots for asset metadata: a matplotlib figure as PNG bytes, and PNG bytes as inline Markdown."""

from __future__ import annotations

import base64
import io
from typing import Any


def new_figure(width: float, height: float, dpi: int = 100) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (no pyplot, no global state), ``width`` × ``height`` inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Any) -> bytes:
    """A matplotlib ``Figure`` laid out tightly and rendered to PNG bytes."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str = "plot") -> str:
    """Markdown showing PNG bytes inline (a data URI), for Dagster's ``MetadataValue.md``."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
