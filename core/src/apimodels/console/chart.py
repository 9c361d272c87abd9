"""The dashboard's chart as inline SVG: one stacked bar a day, one colour a model. Drawn
on the server (no chart library, no script), with a text table beside it for screen
readers."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

#: Colours told apart also by people with the commonest colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
WIDTH, HEIGHT, GAP = 600, 160, 2


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    legend: list[tuple[str, str]]  # (model, colour)
    width: int
    height: int
    max_micros: int

    def rects(self) -> Markup:
        """The bars as SVG, written here rather than in the template: a month of several
        models is hundreds of elements, and Jinja's per-value escaping was most of the
        page's render time."""
        return Markup(
            "".join(
                f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.width:.1f}" height="{b.height:.1f}"'
                f' fill="{b.colour}"><title>{escape(b.title)}</title></rect>'
                for b in self.bars
            )
        )


def stacked_bars(labels: list[str], per_model: dict[str, list[int]]) -> Chart:
    models = sorted(per_model, key=lambda m: -sum(per_model[m]))
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    totals = [sum(per_model[m][i] for m in models) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    step = WIDTH / max(len(labels), 1)
    bars = []
    for i, day in enumerate(labels):
        y = float(HEIGHT)
        for model in models:
            micros = per_model[model][i]
            if not micros:
                continue
            h = HEIGHT * micros / top
            y -= h
            title = f"{day} {model}: ${micros / 1_000_000:.4f}"  # a tooltip, not money math
            bars.append(Bar(i * step, y, step - GAP, h, colours[model], title))
    return Chart(bars, [(m, colours[m]) for m in models], WIDTH, HEIGHT, max(totals, default=0))
