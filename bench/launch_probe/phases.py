"""The --phases table of bench/launch_whole_path.py: how long each step of our launches took, from
the wall-clock notes sitecustomize.py (beside this file) appends in the launcher processes."""

from __future__ import annotations

from bench.harness import percentile

BACKENDS = ("process", "docker", "kubernetes")

STEPS = (("submit sent -> task published", "sent", "published"), ("published -> task starts", "published", "task"),
         ("task -> credentials unsealed", "task", "unsealed"), ("-> site backend", "unsealed", "backend"),
         ("-> request built", "backend", "request"), ("-> prepared", "request", "prepared"),
         ("-> launch returned", "prepared", "launched"), ("launch returned -> running", "launched", "running"),
         ("(POST round trip)", "sent", "posted"))


def report_phases(layouts: dict) -> None:
    print("\nmedian ms of each step of our launches (wall clock; --phases)")
    print("| backend | layout | " + " | ".join(name for name, _, _ in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for backend in BACKENDS:
        for layout in layouts.values():
            notes: dict[tuple[str, str], float] = {}
            with open(layout.env["BENCH_PHASES"]) as f:
                for line in f:
                    key, phase, at = line.split()
                    notes.setdefault((key, phase), float(at))
            steps: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
            for r in (r for r in layout.records if r["backend"] == backend):
                at = {**r, **{phase: notes.get((f"pk:{r['pk']}", phase)) for phase in
                              ("published", "task", "unsealed", "backend", "request", "prepared", "launched")}}
                for name, start, end in STEPS:
                    if at[start] is not None and at[end] is not None:
                        steps[name].append((at[end] - at[start]) * 1000)
            print(f"| {backend} | {layout.name} | " + " | ".join(f"{percentile(v, 50):.0f}" for v in steps.values()) + " |")
