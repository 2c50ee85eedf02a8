"""Writes mochi-serve.json, the Grafana dashboard, from the panel list below (one place for
titles, expressions and units). Run: python3 monitoring/grafana/make_dashboard.py"""

import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(expr, legend)], thresholds in the panel's unit or None)
PANELS = [
    ("Queue depth by lane", "short",
     [("mochi_coordinator_queue_depth_lane", "{{lane}}")], None),
    ("Queue wait p95 by lane (SLO: 120 s)", "s",
     [("histogram_quantile(0.95, sum by (lane, le) (rate(mochi_coordinator_queue_wait_seconds_bucket[5m])))", "{{lane}}")], 120),
    ("End-to-end time of succeeded jobs (SLO: p95 ≤ 600 s)", "s",
     [("histogram_quantile(0.5, sum by (le) (rate(mochi_coordinator_job_seconds_bucket{state=\"succeeded\"}[15m])))", "p50"),
      ("histogram_quantile(0.95, sum by (le) (rate(mochi_coordinator_job_seconds_bucket{state=\"succeeded\"}[15m])))", "p95"),
      ("histogram_quantile(0.99, sum by (le) (rate(mochi_coordinator_job_seconds_bucket{state=\"succeeded\"}[15m])))", "p99")], 600),
    ("Queue-wait SLO budget burn (1 = on budget)", "short",
     [("mochi:queue_wait_over_slo:ratio_rate1h / 0.05", "1 h"),
      ("mochi:queue_wait_over_slo:ratio_rate6h / 0.05", "6 h")], 1),
    ("Jobs ended by state (per minute)", "short",
     [("sum by (state) (rate(mochi_coordinator_jobs_finished_total[5m])) * 60", "{{state}}")], None),
    ("Jobs queued and on nodes", "short",
     [("mochi_coordinator_queue_depth", "queued"),
      ("mochi_coordinator_jobs_on_nodes", "on nodes")], None),
    ("Slots live and free", "short",
     [("mochi_coordinator_slots", "{{state}}")], None),
    ("GPU busy by slot", "percentunit",
     [("avg_over_time(mochi_node_slot_busy[5m])", "{{instance}} slot {{slot}}")], None),
    ("GPU memory by slot", "bytes",
     [("mochi_node_slot_memory_used_bytes", "used {{instance}} slot {{slot}}"),
      ("mochi_node_slot_memory_total_bytes", "total {{instance}} slot {{slot}}")], None),
    ("GPU kernel utilisation by slot, NVML (now, and while jobs run)", "percentunit",
     [("mochi_node_gpu_utilisation_ratio", "now {{instance}} slot {{slot}}"),
      ("sum by (instance, slot) (rate(mochi_node_gpu_job_utilisation_sum[15m])) / sum by (instance, slot) (rate(mochi_node_gpu_job_utilisation_count[15m]))", "while running {{instance}} slot {{slot}}")], None),
    ("GPU memory by slot, measured by the driver (NVML)", "bytes",
     [("mochi_node_gpu_memory_used_bytes", "used {{instance}} slot {{slot}}"),
      ("mochi_node_gpu_memory_total_bytes", "total {{instance}} slot {{slot}}")], None),
    ("Denoising step time p50 by shape bucket (tokens half-octave)", "s",
     [("histogram_quantile(0.5, sum by (tokens, cfg, le) (rate(mochi_node_step_seconds_bucket[5m])))", "{{tokens}} cfg={{cfg}}")], None),
    ("Job time by phase, p50", "s",
     [("histogram_quantile(0.5, sum by (phase, le) (rate(mochi_node_phase_seconds_bucket[15m])))", "{{phase}}")], None),
    ("Cost model error, median observed / predicted − 1", "percentunit",
     [("histogram_quantile(0.5, sum by (class, le) (rate(mochi_coordinator_cost_error_ratio_bucket[1h])))", "{{class}}")], None),
    ("Webhook deliveries (per minute)", "short",
     [("sum by (outcome) (rate(mochi_gateway_webhook_deliveries_total[5m])) * 60", "{{outcome}}")], None),
    ("Refusals (per minute)", "short",
     [("sum(rate(mochi_gateway_rate_limited_total[5m])) * 60", "rate limited"),
      ("sum(rate(mochi_gateway_quota_exceeded_total[5m])) * 60", "over quota"),
      ("sum(rate(mochi_gateway_jobs_too_large_total[5m])) * 60", "too large"),
      ("sum(rate(mochi_gateway_requests_total{status=~\"4..|5..\"}[5m])) * 60", "4xx and 5xx")], None),
    ("Requests by route (per second)", "reqps",
     [("sum by (route) (rate(mochi_gateway_requests_total[5m]))", "{{route}}")], None),
    ("Dead letters and expired leases (last hour)", "short",
     [("increase(mochi_coordinator_dead_letters_total[1h])", "dead letters"),
      ("increase(mochi_coordinator_leases_expired_total[1h])", "leases expired")], None),
    ("SSE streams open and NATS connections", "short",
     [("mochi_gateway_event_streams_open", "event streams"),
      ("mochi_nats_connected", "NATS {{client}}")], None),
]


def panel(index, title, unit, targets, threshold):
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {"thresholdsStyle": {"mode": "line" if threshold is not None else "off"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


dashboard = {
    "title": "mochi-serve",
    "uid": "mochi-serve",
    "description": "Queue, SLOs, jobs, GPU slots, cost model, webhooks and refusals of mochi-serve",
    "tags": ["mochi-serve"],
    "timezone": "",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [{
        "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0,
    }]},
    "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
}

out = pathlib.Path(__file__).with_name("mochi-serve.json")
out.write_text(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {out} ({len(PANELS)} panels)")
