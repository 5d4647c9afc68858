"""A site's history page: finished jobs per day and their durations, drawn as server-side SVG bars."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from jobs import selectors
from jobs.models import TERMINAL
from jobs.views.common import get_site, parse_int, render_page

CHART_W, CHART_H, BAR_GAP = 640, 180, 4
DURATION_BUCKETS = ["< 10 s", "10 s – 1 min", "1–10 min", "10 min – 1 h", "1–6 h", "≥ 6 h"]


@login_required
@require_GET
def site_history(request, site):
    site = get_site(request, site)
    days = min(max(parse_int(request.GET.get("days")) or 14, 1), 90)
    history = selectors.site_history(site, days=days)
    today = timezone.now().date()
    day_list = [today - timedelta(days=i) for i in range(days - 1, -1, -1)]
    by_day = {d: {s: 0 for s in TERMINAL} for d in day_list}
    for row in history["per_day"]:
        if row["day"] in by_day:
            by_day[row["day"]][row["state"]] = row["n"]
    top = max([sum(v.values()) for v in by_day.values()] + [1])
    width = (CHART_W - 40) / len(day_list)
    bars = []
    for i, day in enumerate(day_list):
        y = CHART_H
        segments = []
        for state in TERMINAL:
            n = by_day[day][state]
            if n:
                h = n / top * (CHART_H - 20)
                y -= h
                segments.append({"state": state, "n": n, "y": round(y, 1), "h": round(h, 1)})
        bars.append({"day": day, "x": round(40 + i * width, 1), "w": round(max(width - BAR_GAP, 1), 1),
                     "segments": segments, "total": sum(by_day[day].values()),
                     "label": i % max(1, len(day_list) // 7) == 0})
    counts = [history["durations"].get(i, 0) for i in range(len(DURATION_BUCKETS))]
    dtop = max(counts + [1])
    dw = (CHART_W - 40) / len(counts)
    duration_bars = [{"label": label, "n": n, "x": round(40 + i * dw, 1), "w": round(dw - 8, 1),
                      "h": round(n / dtop * (CHART_H - 20), 1), "y": round(CHART_H - n / dtop * (CHART_H - 20), 1),
                      "tx": round(40 + i * dw + (dw - 8) / 2, 1)}
                     for i, (label, n) in enumerate(zip(DURATION_BUCKETS, counts))]
    return render_page(request, "jobs/history.html", {
        "days": days, "bars": bars, "top": top, "states": TERMINAL, "duration_bars": duration_bars, "dtop": dtop,
        "chart_w": CHART_W, "chart_h": CHART_H, "chart_h_label": CHART_H + 16,
        "totals": {s: sum(by_day[d][s] for d in day_list) for s in TERMINAL},
        "list_url": reverse("site-overview", kwargs={"site": site.name}) + "?" + urlencode(
            {"created_after": day_list[0].isoformat(), "sort": "-duration"}),
    }, site=site, section="history")
