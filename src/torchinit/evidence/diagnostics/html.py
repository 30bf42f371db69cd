"""Side-by-side HTML comparison of several reports."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .fmt import _fmt, _pct

if TYPE_CHECKING:  # pragma: no cover
    from .report import Report


__all__ = ["save_comparison", "comparison_html"]


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def comparison_html(reports: Mapping[str, Report], images: Mapping[str, Path], title: str,
                    sections: Sequence[str] = ()) -> str:
    """A self-contained HTML page: images embedded as base64 PNGs, verdicts and layer tables,
    then ``sections`` (HTML fragments such as ``CoordCheck.to_html()``), as given."""
    css = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0;"
           "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
           "td:nth-child(2),td:nth-child(3){text-align:left}.error{color:#b00}.warning{color:#a60}"
           ".info{color:#06a}.ok{color:#080}img{max-width:100%}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for caption, path in images.items():
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{_png_b64(path)}'/>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for name, rep in reports.items():
        parts.append(f"<h2>{html.escape(name)}</h2><h3>verdicts</h3>")
        if rep.verdicts:
            parts.append("<ul>" + "".join(
                f"<li class='{html.escape(v.severity)}'><b>{html.escape(v.severity)}</b> {html.escape(v.kind)} "
                f"at <code>{html.escape(v.layer)}</code>: {html.escape(v.message)} <i>Fix:</i> {html.escape(v.fix)}</li>"
                for v in rep.verdicts) + "</ul>")
        else:
            parts.append("<p class='ok'>no problem found</p>")
        if rep.meta.get("grad_note"):
            parts.append(f"<p><i>note:</i> {html.escape(str(rep.meta['grad_note']))}</p>")
        parts.append("<h3>layers</h3>")
        parts.append(_html_table(
            ["#", "layer", "type", "mean", "std", "max|x|", "dead", "sat", "cos", "grad std"],
            ([i, r.name, r.type, _fmt(r.mean), _fmt(r.std), _fmt(r.max_abs), _pct(r.dead), _pct(r.saturated),
              _fmt(r.cosine, ".2f"), _fmt(r.grad_std)] for i, r in enumerate(rep.layers))))
    parts.extend(sections)
    parts.append("</body></html>")
    return "".join(parts)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"


def _file_stems(names: Sequence[str]) -> dict[str, str]:
    """``{name: slug}``, unique even on case-insensitive file systems: names whose slugs
    collide ("a.b" and "a b", "ReLU" and "relu") get an 8-hex-digit hash of the exact name
    appended, so each name maps to the same file whatever the other names' order."""
    import hashlib

    slugs = {n: _slug(n) for n in names}
    count: dict[str, int] = {}
    for sl in slugs.values():
        count[sl.casefold()] = count.get(sl.casefold(), 0) + 1
    stems = {n: sl if count[sl.casefold()] == 1 else f"{sl}_{hashlib.sha1(n.encode()).hexdigest()[:8]}"
             for n, sl in slugs.items()}
    if len({st.casefold() for st in stems.values()}) < len(stems):  # a name that looks like a hashed one
        raise ValueError(f"save_comparison: report names {list(names)!r} map to clashing file names "
                         f"{list(stems.values())!r}; rename the reports")
    return stems


def save_comparison(reports: Mapping[str, Report], directory: str | Path, *, title: str = "torchinit report",
                    theory: Mapping[str, float] | None = None, sections: Sequence[str] = ()) -> Path:
    """Write the signal-propagation plot of all ``reports`` on one figure
    (``signal.png``), their histograms side by side (``histograms.png``),
    ``report[_NAME].json`` and a self-contained ``report.html``; returns the HTML path.

    ``NAME`` is the report's name with characters other than letters, digits, ``-`` and
    ``_`` replaced by ``_``; names that would then share a file (``"a.b"`` and ``"a b"``,
    or differ only in case) get ``_`` and 8 hex digits of a hash of the exact name
    appended, so no report overwrites another. ``sections``: HTML fragments appended to
    the page (``torchinit.coord_check(...).to_html()``)."""
    from ..plots import activation_histograms, signal_propagation

    if not reports:
        raise ValueError("save_comparison: reports is empty")
    stems = _file_stems(list(reports))  # before writing anything
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    sig = d / "signal.png"
    signal_propagation(dict(reports), sig, theory=theory, title=title)
    images["signal propagation: std and mean^2 of each weight layer's output by depth"] = sig
    single = len(reports) == 1
    hp = d / "histograms.png"
    activation_histograms(dict(reports), hp, title="histograms by depth" if not single else None)
    images["histograms of layer outputs by depth (Glorot & Bengio style)"] = hp
    for name, rep in reports.items():
        suffix = "" if single else f"_{stems[name]}"
        (d / f"report{suffix}.json").write_text(rep.to_json())
    out = d / "report.html"
    out.write_text(comparison_html(reports, images, title, sections=tuple(sections)), encoding="utf-8")
    return out
