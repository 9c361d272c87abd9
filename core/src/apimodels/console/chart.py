"""The dashboard's chart as inline SVG: one stacked bar a day, one colour a model. Drawn
on the server (no chart library, no script), with a text table beside it for screen
readers."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

from ..billing.money import format_usd

#: Colours told apart also by people with the commonest colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
WIDTH, HEIGHT, GAP = 600, 160, 2
#: Room under the bars for the first and last day, and above them for the top amount.
BELOW, ABOVE = 16, 14


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
    first_day: str = ""
    last_day: str = ""

    @property
    def view_box(self) -> str:
        return f"0 {-ABOVE} {self.width} {self.height + ABOVE + BELOW}"

    def axis(self) -> Markup:
        """The scale: the highest day's total at the top, the first and last days below."""
        if not self.bars:
            return Markup("")
        top = f"${format_usd(self.max_micros)}"
        y = self.height + BELOW - 3
        return Markup(
            f'<line x1="0" y1="0" x2="{self.width}" y2="0" class="grid"/>'
            f'<text x="0" y="-3" class="tick">{escape(top)}</text>'
            f'<text x="0" y="{y}" class="tick">{escape(self.first_day)}</text>'
            f'<text x="{self.width}" y="{y}" class="tick" text-anchor="end">'
            f"{escape(self.last_day)}</text>"
        )

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
            title = f"{day} {model}: ${format_usd(micros)}"
            bars.append(Bar(i * step, y, step - GAP, h, colours[model], title))
    legend = [(m, colours[m]) for m in models]
    first, last = (labels[0], labels[-1]) if labels else ("", "")
    return Chart(bars, legend, WIDTH, HEIGHT, max(totals, default=0), first, last)
