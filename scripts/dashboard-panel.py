#!/usr/bin/env python3
"""Append a timeseries panel to deploy/grafana/tl-gateway.json (keeps the layout: two per row).

    scripts/dashboard-panel.py TITLE UNIT 'LEGEND=EXPR' ['LEGEND=EXPR' ...]
"""
import json
import sys

path = "deploy/grafana/tl-gateway.json"
title, unit, *targets = sys.argv[1:]
dashboard = json.load(open(path))
panels = dashboard["panels"]
last = max(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
x, y = (12, last["gridPos"]["y"]) if last["gridPos"]["x"] == 0 else (0, last["gridPos"]["y"] + 8)
panels.append({
    "id": max(p["id"] for p in panels) + 1,
    "type": "timeseries",
    "title": title,
    "datasource": {"type": "prometheus", "uid": "${datasource}"},
    "gridPos": {"x": x, "y": y, "w": 12, "h": 8},
    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    "options": {"legend": {"displayMode": "table", "placement": "right"}},
    "targets": [
        {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
        for i, (legend, expr) in enumerate(t.split("=", 1) for t in targets)
    ],
})
json.dump(dashboard, open(path, "w"), indent=2)
open(path, "a").write("\n")
