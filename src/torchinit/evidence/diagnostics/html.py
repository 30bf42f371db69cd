"""The HTML report of one or several diagnostics reports (``torchinit report``, ``demo``,
:meth:`Report.to_html`, notebooks).

One layout for all of them, top to bottom:

1. **summary**: every verdict (one row each: scheme, severity, kind, where it starts, the
   finding, the fix; "ok" for a scheme without one) and the comparison table the terminal
   shows (output std of each weight layer by depth, one column per scheme);
2. **run**: torchinit and torch versions, model, schemes, seed, input shape, loss, the
   command (when the CLI made the page);
3. **plots**: the forward signal (std and channel means of each weight layer's output)
   beside the backward signal (gradient std at each weight layer's output); the residual
   stream between blocks for residual networks (transformers); histograms of layer
   outputs, one panel per scheme, on log axes so that narrow and wide layers both show;
4. **layers**: per scheme, the full per-layer table (folded).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .fmt import _fmt, _pct

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .report import Report


__all__ = ["save_comparison", "comparison_html", "Comparison"]

#: rows of the std-by-depth table beyond which the middle is elided (first and last halves kept)
MAX_TABLE_ROWS = 200
_PAGE_CSS = "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}"
_CSS = (".ti table{border-collapse:collapse;margin:.6em 0;font-size:13px}"
        ".ti td,.ti th{border:1px solid #ccc;padding:2px 6px;text-align:right;vertical-align:top}"
        ".ti th{background:#f3f3f3}.ti td.l,.ti th.l{text-align:left}"
        ".ti .error{color:#b00;font-weight:bold}.ti .warning{color:#a60;font-weight:bold}.ti .info{color:#06a}"
        ".ti .ok{color:#080;font-weight:bold}.ti .row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
        ".ti figure{margin:.4em 0}.ti img{max-width:100%;border:1px solid #eee}"
        ".ti .row figure{flex:1 1 0;min-width:320px}.ti .row #fig-signal{flex-grow:2}.ti .row img{width:100%}"
        ".ti figcaption{font-size:12px;color:#555;max-width:800px}.ti h2{border-bottom:1px solid #ddd}")
_SEV = {"error": 0, "warning": 1, "info": 2}


def _png(fig: "Figure", dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _cell(c: Any, cls: str = "") -> str:
    return f"<td class='{cls}'>{html.escape(str(c))}</td>" if cls else f"<td>{html.escape(str(c))}</td>"


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, left: Sequence[int] = (1, 2),
                cls: str = "") -> str:
    h = "".join(f"<th class='l'>{html.escape(str(c))}</th>" if i in left else f"<th>{html.escape(str(c))}</th>"
                for i, c in enumerate(headers))
    body = "".join("<tr>" + "".join(_cell(c, "l" if i in left else "") for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _verdict_table(reports: Mapping[str, "Report"]) -> str:
    """One row per verdict of every report (errors first within a report); "ok" for a report without one."""
    rows = []
    for name, rep in reports.items():
        if not rep.verdicts:
            rows.append(f"<tr class='verdict'>{_cell(name, 'l')}<td class='l ok'>ok</td>{_cell('-', 'l')}"
                        f"{_cell('-', 'l')}{_cell('no problem found', 'l')}{_cell('-', 'l')}</tr>")
        for v in sorted(rep.verdicts, key=lambda v: _SEV.get(v.severity, 3)):
            rows.append(f"<tr class='verdict'>{_cell(name, 'l')}<td class='l {html.escape(v.severity)}'>"
                        f"{html.escape(v.severity)}</td>{_cell(v.kind, 'l')}<td class='l'><code>"
                        f"{html.escape(v.layer)}</code></td>{_cell(v.message, 'l')}{_cell(v.fix, 'l')}</tr>")
    head = "".join(f"<th class='l'>{c}</th>" for c in ("scheme", "severity", "kind", "starts at", "finding", "fix"))
    return f"<table class='verdicts'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _std_rows(reports: Mapping[str, "Report"], max_rows: int | None) -> list[list[str]]:
    tracks = {n: r.signal() for n, r in reports.items()}
    depth = max((len(v) for v in tracks.values()), default=0)
    idx = list(range(depth))
    if max_rows is not None and depth > max_rows:
        idx = idx[: max_rows // 2] + [-1] + idx[-(max_rows - max_rows // 2):]
    rows = []
    for i in idx:
        if i < 0:
            rows.append(["...", f"({depth - max_rows} more)", *(["..."] * len(tracks))])
            continue
        layer = next((v[i].name for v in tracks.values() if i < len(v)), "-")
        rows.append([str(i + 1), layer, *(_fmt(v[i].std) if i < len(v) else "-" for v in tracks.values())])
    return rows


def _std_table(reports: Mapping[str, "Report"], max_rows: int | None = MAX_TABLE_ROWS) -> str:
    """The terminal's comparison table: output std of each weight layer (rows) per scheme (columns)."""
    return _html_table(["depth", "layer", *(f"{n} std" for n in reports)], _std_rows(reports, max_rows),
                       left=(1,), cls="stds")


def _run_rows(reports: Mapping[str, "Report"], run: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    import torch

    from ..._version import __version__

    first = next(iter(reports.values()))
    versions = first.meta.get("versions") or {}
    rows = [("torchinit", str(versions.get("torchinit", __version__))),
            ("torch", str(versions.get("torch", torch.__version__))),
            ("model", str(first.meta.get("model", "-"))),
            ("schemes", ", ".join(reports)),
            ("input shape", "x".join(map(str, first.meta.get("input_shape") or [])) or "-"),
            ("loss", str(first.meta.get("loss") or "-"))]
    for k, v in (run or {}).items():  # the caller's: seed, policy, command, ...
        rows.append((str(k), str(v)))
    return rows


def _figures(reports: Mapping[str, "Report"], theory: Mapping[str, Any] | None,
             title: str, *, histograms: bool = True) -> dict[str, tuple[str, "Figure"]]:
    """``{file stem: (caption, figure)}`` in page order."""
    from ..plots import activation_histograms, gradient_propagation, residual_stream, signal_propagation

    figs: dict[str, tuple[str, Figure]] = {}
    figs["signal"] = ("forward: std (left) and squared channel means (right) of each weight layer's output, by "
                      "depth; flat is healthy, falling is vanishing, rising is exploding",
                      signal_propagation(dict(reports), theory=theory, title=title))
    figs["gradients"] = ("backward: std of the loss gradient at each weight layer's output, by depth",
                         gradient_propagation(dict(reports)))
    if any(r.meta.get("stream") for r in reports.values()):
        figs["stream"] = ("residual stream: std of what flows between the blocks (the blocks' outputs), by "
                          "block; the per-layer plot of a transformer alternates wide and branch-ending layers",
                          residual_stream(dict(reports)))
    if not histograms:
        return figs
    single = len(reports) == 1
    figs["histograms"] = ("histograms of layer outputs at a few depths, one panel per scheme (Glorot & Bengio "
                          "style; log density, and a symmetric-log value axis when the layers' ranges differ "
                          "widely)", activation_histograms(dict(reports), title=None if single else "histograms by depth"))
    return figs


def _body(reports: Mapping[str, "Report"], images: Mapping[str, tuple[str, bytes]], title: str | None,
          run: Mapping[str, Any] | None, *, details: bool = True) -> str:
    """The page's content inside ``<div class='ti'>`` (also what notebooks show)."""

    def fig(stem: str) -> str:
        if stem not in images:
            return ""
        caption, png = images[stem]
        return (f"<figure id='fig-{stem}'><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                f"{base64.b64encode(png).decode('ascii')}'/><figcaption>{html.escape(caption)}</figcaption></figure>")

    parts = ["<div class='ti'>"]
    if title:
        parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append("<section id='summary'><h2>Summary</h2><h3>verdicts</h3>" + _verdict_table(reports))
    notes = [(n, r.meta["grad_note"]) for n, r in reports.items() if r.meta.get("grad_note")]
    parts.extend(f"<p><i>note ({html.escape(n)}):</i> {html.escape(str(t))}</p>" for n, t in notes)
    parts.append("<h3>output std of each weight layer</h3>" + _std_table(reports) + "</section>")
    parts.append("<section id='run'><h2>Run</h2>" + _html_table(["", "value"], _run_rows(reports, run), left=(0, 1),
                                                                 cls="run") + "</section>")
    parts.append("<section id='plots'><h2>Signal propagation</h2><div class='row'>" + fig("signal") + fig("gradients")
                 + "</div>" + fig("stream") + fig("histograms") + "</section>")
    if details:
        parts.append("<section id='layers'><h2>Layers</h2>")
        for name, rep in reports.items():
            parts.append(f"<details><summary>{html.escape(name)}: {len(rep.layers)} recorded layers</summary>")
            parts.append(_html_table(
                ["#", "layer", "type", "mean", "std", "max|x|", "dead", "sat", "cos", "grad std"],
                ([i, r.name, r.type, _fmt(r.mean), _fmt(r.std), _fmt(r.max_abs), _pct(r.dead), _pct(r.saturated),
                  _fmt(r.cosine, ".2f"), _fmt(r.grad_std)] for i, r in enumerate(rep.layers)), cls="layers"))
            parts.append("</details>")
        parts.append("</section>")
    parts.append("</div>")
    return "".join(parts)


def _render(reports: Mapping[str, "Report"], title: str, run: Mapping[str, Any] | None,
            theory: Mapping[str, Any] | None, sections: Sequence[str] = ()) -> tuple[str, dict[str, tuple[str, bytes]]]:
    if not reports:
        raise ValueError("save_comparison: reports is empty")
    images = {stem: (caption, _png(f)) for stem, (caption, f) in _figures(reports, theory, title).items()}
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_PAGE_CSS}{_CSS}</style></head><body>{_body(reports, images, title, run)}"
            f"{''.join(sections)}</body></html>")
    return page, images


def comparison_html(reports: Mapping[str, "Report"], title: str = "torchinit report", *,
                    run: Mapping[str, Any] | None = None, theory: Mapping[str, Any] | None = None,
                    sections: Sequence[str] = ()) -> str:
    """A self-contained HTML page (plots embedded as base64 PNGs) for ``reports``
    (``{scheme: Report}``); ``run`` adds rows to its run table (seed, policy, command, ...);
    ``sections`` (HTML fragments such as ``CoordCheck.to_html()``) go at the end, as given."""
    return _render(reports, title, run, theory, tuple(sections))[0]


def notebook_html(reports: Mapping[str, "Report"], *, plots: bool = True) -> str:
    """What a notebook shows (``_repr_html_``): the summary, run and plot sections of the page."""
    images = {}
    if plots:
        images = {stem: (caption, _png(f))
                  for stem, (caption, f) in _figures(reports, None, "", histograms=False).items()}
    return f"<style>{_CSS}</style>" + _body(reports, images, None, None, details=False)


class Comparison(dict):
    """``{scheme: Report}`` of one model under several inits (``torchinit report --compare``):
    a dict, plus the HTML page (:meth:`to_html`, :meth:`save`) and notebook display."""

    def to_html(self, path: str | Path | None = None, *, title: str = "torchinit comparison",
                run: Mapping[str, Any] | None = None) -> str:
        """The page's HTML; also written to ``path`` when given."""
        page = comparison_html(self, title, run=run)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def save(self, directory: str | Path, *, title: str = "torchinit comparison",
             run: Mapping[str, Any] | None = None) -> Path:
        """:func:`save_comparison` of these reports; returns the HTML path."""
        return save_comparison(self, directory, title=title, run=run)

    def __repr__(self) -> str:
        bad = {n: len(r.verdicts) for n, r in self.items()}
        return f"<Comparison of {len(self)} schemes: " + ", ".join(f"{n} ({k} verdicts)" for n, k in bad.items()) + ">"

    def _repr_html_(self) -> str:
        return notebook_html(self)


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


def save_comparison(reports: Mapping[str, "Report"], directory: str | Path, *, title: str = "torchinit report",
                    theory: Mapping[str, float] | None = None, run: Mapping[str, Any] | None = None,
                    sections: Sequence[str] = ()) -> Path:
    """Write the page of ``reports`` (see the module docstring) as a self-contained
    ``report.html``, its plots as PNGs (``signal.png``, ``gradients.png``, ``stream.png``
    for residual networks, ``histograms.png``) and ``report[_NAME].json`` into
    ``directory``; returns the HTML path. ``run`` adds rows to the page's run table.

    ``NAME`` is the report's name with characters other than letters, digits, ``-`` and
    ``_`` replaced by ``_``; names that would then share a file (``"a.b"`` and ``"a b"``,
    or differ only in case) get ``_`` and 8 hex digits of a hash of the exact name
    appended, so no report overwrites another. ``sections``: HTML fragments (such as
    ``CoordCheck.to_html()``) appended to the page."""
    if not reports:
        raise ValueError("save_comparison: reports is empty")
    stems = _file_stems(list(reports))  # before writing anything
    page, images = _render(reports, title, run, theory, tuple(sections))
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for stem, (_caption, png) in images.items():
        (d / f"{stem}.png").write_bytes(png)
    single = len(reports) == 1
    for name, rep in reports.items():
        suffix = "" if single else f"_{stems[name]}"
        (d / f"report{suffix}.json").write_text(rep.to_json())
    out = d / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
