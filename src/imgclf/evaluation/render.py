"""Rendering a :class:`~imgclf.evaluation.report.ReportData` as HTML and as Markdown.

The HTML page needs no server and no script: styles are inline and figures are PNG files next to
it, linked by relative paths, so the report directory can be zipped, attached or published as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from imgclf.evaluation.metrics import SplitMetrics
from imgclf.evaluation.results import GalleryItem, ReportData

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
       margin-top: 2em; }
.meta { color: #555; } .meta dt { font-weight: 600; float: left; clear: left; width: 11em; }
.meta dd { margin: 0 0 0.2em 11.5em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f5f5f7; }
td.weak { color: #b00020; font-weight: 600; }
img.figure { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 170px; font-size: 12px; }
.gallery img { width: 160px; height: 160px; object-fit: contain; background: #f5f5f7; }
.gallery .path { color: #777; word-break: break-all; }
"""

#: Per-class F1 below this is highlighted in the HTML table.
WEAK_F1 = 0.8

HEADLINE_COLUMNS = (
    "split",
    "images",
    "skipped",
    "top-1",
    "top-3",
    "loss",
    "macro F1",
    "weighted F1",
    "top-1 at training",
)


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _headline_rows(data: ReportData) -> list[list[str]]:
    rows = []
    for split, metrics in data.results.items():
        recorded = data.manifest.metrics.get(split, {}).get("top1")
        top3 = _pct(metrics.top3)
        if metrics.top_k != 3:
            top3 += f" (top-{metrics.top_k})"
        rows.append(
            [
                split,
                str(metrics.count),
                str(data.skipped.get(split, 0)),
                _pct(metrics.top1),
                top3,
                f"{metrics.loss:.4f}",
                f"{metrics.macro_f1:.4f}",
                f"{metrics.weighted_f1:.4f}",
                _pct(recorded) if recorded is not None else "-",
            ]
        )
    return rows


def _gap_rows(data: ReportData) -> list[list[str]]:
    return [
        [
            f"{gap.first} -> {gap.second}",
            f"{gap.top1_drop * 100:+.2f} pts",
            f"{gap.loss_increase:+.4f}",
            "this evaluation" if gap.source == "evaluation" else gap.source,
        ]
        for gap in data.gaps
    ]


GAP_COLUMNS = ("splits", "top-1 drop", "loss increase", "numbers")
CLASS_COLUMNS = ("class", "precision", "recall", "F1", "support", "predicted")


def _class_rows(metrics: SplitMetrics) -> list[list[str]]:
    return [
        [
            item.name,
            f"{item.precision:.3f}",
            f"{item.recall:.3f}",
            f"{item.f1:.3f}",
            str(item.support),
            str(item.predicted),
        ]
        for item in metrics.per_class
    ]


def _meta(data: ReportData) -> list[tuple[str, str]]:
    manifest = data.manifest
    config = manifest.preprocess_config
    return [
        ("model", f"{manifest.name} (version {manifest.version})"),
        ("backbone", manifest.backbone),
        ("artifact evaluated", data.artifact or "-"),
        ("input", f"{config.input_size} px, {config.interpolation}, crop {config.crop_pct:g}"),
        ("labels", f"{len(manifest.labels)}: {', '.join(manifest.labels)}"),
        ("data", str(data.data_root) if data.data_root else "records passed in"),
        ("model created", manifest.created_at.strftime("%Y-%m-%d %H:%M UTC")),
        ("report created", data.created_at.strftime("%Y-%m-%d %H:%M UTC")),
    ]


# ----------------------------------------------------------------------------------------- HTML


def _html_table(columns: Sequence[str], rows: Iterable[Sequence[str]], weak_col: int = -1) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            weak = index == weak_col and _is_weak(cell)
            cells.append(f"<td{' class=weak' if weak else ''}>{escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _is_weak(cell: str) -> bool:
    try:
        return float(cell) < WEAK_F1
    except ValueError:
        return False


def _html_img(file: str | None, alt: str) -> str:
    if not file:
        return ""
    return f'<img class="figure" src="{escape(file)}" alt="{escape(alt)}">'


def _html_gallery(items: Sequence[GalleryItem]) -> str:
    figures = []
    for item in items:
        mistake = item.mistake
        figures.append(
            f'<figure><img src="{escape(item.thumbnail)}" alt="{escape(mistake.path.name)}">'
            f"<figcaption>true: <b>{escape(mistake.true_label)}</b><br>"
            f"predicted: <b>{escape(mistake.predicted_label)}</b> "
            f"({mistake.probability:.1%})<br>p(true) {mistake.true_probability:.1%}<br>"
            f'<span class="path">{escape(mistake.path.name)}</span></figcaption></figure>'
        )
    return f'<div class="gallery">{"".join(figures)}</div>'


def _html_sections(data: ReportData) -> list[str]:
    parts = ["<h2>Results</h2>", _html_table(HEADLINE_COLUMNS, _headline_rows(data))]
    if data.gaps:
        parts += ["<h3>Generalisation gap</h3>", _html_table(GAP_COLUMNS, _gap_rows(data))]
    parts.append("<h2>Per class</h2>")
    parts.append(_html_img(data.figures.get("per_class_f1"), "F1 per class"))
    for split, metrics in data.results.items():
        parts.append(f"<h3>{escape(split)}</h3>")
        parts.append(_html_table(CLASS_COLUMNS, _class_rows(metrics), weak_col=3))
        parts.append(_html_img(data.figures["confusion"].get(split), f"{split} confusion"))
    if data.figures.get("training_curves"):
        parts += ["<h2>Training curves</h2>", _html_img(data.figures["training_curves"], "curves")]
    for split, items in data.gallery.items():
        parts.append(f"<h2>Most confident mistakes: {escape(split)}</h2>")
        parts.append(_html_gallery(items) if items else "<p>No mistakes.</p>")
    if data.problems:
        parts.append(f"<h2>Skipped files ({len(data.problems)})</h2><ul>")
        parts += [f"<li>{escape(str(p.path))}: {escape(p.reason)}</li>" for p in data.problems]
        parts.append("</ul>")
    return parts


def render_html(data: ReportData) -> str:
    """The report as one HTML page (figures linked relative to it)."""
    title = f"Evaluation of {data.manifest.name}"
    meta = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in _meta(data))
    notes = "".join(f"<p>{escape(note)}</p>" for note in data.notes)
    body = "\n".join(_html_sections(data))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f'<h1>{escape(title)}</h1><dl class="meta">{meta}</dl>{notes}\n{body}\n</body></html>\n'
    )


# ------------------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (figures linked relative to it)."""
    lines = [f"# Evaluation of {data.manifest.name}", ""]
    lines += [f"- **{key}**: {_md_cell(value)}" for key, value in _meta(data)]
    lines += ["", *(f"{note}\n" for note in data.notes), "## Results", ""]
    lines += _md_table(HEADLINE_COLUMNS, _headline_rows(data))
    if data.gaps:
        lines += ["### Generalisation gap", "", *_md_table(GAP_COLUMNS, _gap_rows(data))]
    lines += ["## Per class", "", f"![F1 per class]({data.figures['per_class_f1']})", ""]
    for split, metrics in data.results.items():
        lines += [f"### {split}", "", *_md_table(CLASS_COLUMNS, _class_rows(metrics))]
        lines += [f"![{split} confusion matrix]({data.figures['confusion'][split]})", ""]
    if data.figures.get("training_curves"):
        lines += [
            "## Training curves",
            "",
            f"![training curves]({data.figures['training_curves']})",
        ]
        lines.append("")
    for split, grid in data.figures.get("mistakes", {}).items():
        lines += [f"## Most confident mistakes: {split}", ""]
        lines += [f"![{split} mistakes]({grid})" if grid else "No mistakes.", ""]
    if data.problems:
        lines += [f"## Skipped files ({len(data.problems)})", ""]
        lines += [f"- `{p.path}`: {_md_cell(p.reason)}" for p in data.problems]
        lines.append("")
    return "\n".join(lines)
