#!/usr/bin/env python3
"""Checks that the Grafana dashboard, the alert rules and docs/metrics.md name only metrics the
service exports, and that the docs list every one of them.

The list of exported metrics comes from a real scrape (attention_metrics_scrape serves a Metrics
instance through the real exposer and prints GET /metrics), so it cannot drift from the code.
With promtool on PATH, every dashboard query is also parsed by Prometheus's own PromQL parser
(as recording rules through `promtool check rules`).

Usage: check_metric_names.py --scrape-bin BIN --dashboard JSON --rules YAML --docs MD
Exit status: 0 all good, 1 a check failed, 2 usage or environment error.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "inf", "nan", "atan2"}
CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# Series Prometheus itself attaches to every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# Grafana's built-in variables, replaced by plausible values before PromQL parsing.
GRAFANA_VARS = [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"),
                ("$job", ".+"), ("$instance", ".+")]


def exported_families(scrape_text):
    """{family name: type} from the # TYPE lines of a text-format scrape."""
    families = {}
    for line in scrape_text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "#" and parts[1] == "TYPE":
            families[parts[2]] = parts[3]
    return families


def series_names(families):
    """Every series name a query may select: histograms add _bucket, _count and _sum."""
    names = set(SYNTHETIC)
    for name, kind in families.items():
        names.add(name)
        if kind == "histogram":
            names.update({name + "_bucket", name + "_count", name + "_sum"})
        elif kind == "summary":
            names.update({name + "_count", name + "_sum"})
    return names


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def metric_names(expr):
    """Metric names a PromQL expression selects (functions, keywords, labels and durations
    excluded)."""
    e = strip_strings(expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)      # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)    # range and subquery durations
    while True:
        stripped = CLAUSE.sub(" ", e)      # by (...), on (...), group_left (...)
        if stripped == e:
            break
        e = stripped
    names = set()
    for m in IDENT.finditer(e):
        word = m.group(0)
        before = e[m.start() - 1] if m.start() > 0 else " "
        if before.isdigit() or before == "." or before == "$":
            continue                        # 1e-3, 5m after offset, Grafana variables
        if word.lower() in KEYWORDS:
            continue
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue                        # function or aggregation
        names.add(word)
    return names


def templating_metric_names(query):
    """Grafana query-variable syntax: label_values(metric{...}, label), metrics(regex),
    query_result(expr), or a plain series selector."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    if m:
        return metric_names(m.group(1))
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
    if m:
        return metric_names(m.group(1))
    return metric_names(query)


def dashboard_queries(dashboard):
    """(where, expr) for every panel target, nested rows included."""
    queries = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    queries.append((f'panel "{panel.get("title")}" {target.get("refId")}',
                                    target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return queries


def dashboard_variable_queries(dashboard):
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        out.append((f'variable "{var.get("name")}"', query))
    return out


def rule_expressions(text):
    """(where, expr) for each `expr:` of a Prometheus rule file: plain or block scalars."""
    exprs = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        start = i + 1
        if value in ("|", ">", "|-", ">-", "|+", ">+"):
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            exprs.append((f"line {start}", "\n".join(block)))
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        exprs.append((f"line {start}", value))
        i += 1
    return exprs


def documented_names(markdown):
    """Metric names in the first column of the docs' metric tables (those whose header's first
    cell is "Metric"): | `name` | ..."""
    names = set()
    in_metric_table = False
    previous_is_table = False
    for line in markdown.splitlines():
        is_table = line.lstrip().startswith("|")
        if is_table and not previous_is_table:
            in_metric_table = re.match(r"^\s*\|\s*Metric\s*\|", line) is not None
        elif is_table and in_metric_table:
            m = re.match(r"^\s*\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|", line)
            if m:
                names.add(m.group(1))
        previous_is_table = is_table
    return names


def self_test():
    """The extractor on known expressions, so that a checker bug cannot make the real check
    pass vacuously."""
    cases = [
        ('histogram_quantile(0.99, sum by (le, stage) (rate(a_seconds_bucket{job=~"$job", '
         'x="y{z}"}[$__rate_interval])))', {"a_seconds_bucket"}),
        ("sum(rate(a_total[5m])) / sum(rate(b_total[5m] offset 1h)) > 1e-3", {"a_total", "b_total"}),
        ("a_bytes - on (instance) group_left (device) b_bytes", {"a_bytes", "b_bytes"}),
        ("max by (instance) (q_requests > 0) and bool up", {"q_requests", "up"}),
        ("count without (code) (nan_metric) or vector(1)", {"nan_metric"}),
        ('label_replace(x_info, "dst", "$1", "src", "(.*)")', {"x_info"}),
    ]
    for expr, expected in cases:
        got = metric_names(expr)
        if got != expected:
            raise AssertionError(f"self-test: {expr!r}: got {sorted(got)}, want {sorted(expected)}")
    got = templating_metric_names('label_values(attention_build_info{job=~"$job"}, instance)')
    if got != {"attention_build_info"}:
        raise AssertionError(f"self-test: label_values: got {sorted(got)}")
    rules = ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n"
             "      - alert: B\n        expr: |\n          sum(rate(x_total[5m]))\n"
             "            > 1\n        for: 5m\n      - record: r\n        expr: 'y_bytes'\n")
    got = [metric_names(e) for _, e in rule_expressions(rules)]
    if got != [{"up"}, {"x_total"}, {"y_bytes"}]:
        raise AssertionError(f"self-test: rule_expressions: got {got}")
    docs = ("| Label | Values |\n|---|---|\n| `method` | x |\n\n"
            "| Metric | Type |\n|---|---|\n| `a_total` | counter |\n| b | x |\n|`c_bytes`|gauge|\n")
    if documented_names(docs) != {"a_total", "c_bytes"}:
        raise AssertionError(f"self-test: documented_names: got {documented_names(docs)}")


def promql_parse_errors(queries, promtool):
    """Parses each query with promtool (as recording rules); returns its complaints."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard_rules.yml")
        with open(path, "w") as f:
            f.write("groups:\n  - name: dashboard\n    rules:\n")
            for i, (_, expr) in enumerate(queries):
                for var, value in GRAFANA_VARS:
                    expr = expr.replace(var, value)
                f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(expr)}\n")
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if result.returncode != 0:
            return [result.stdout + result.stderr]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrape-bin", required=True)
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--rules", required=True)
    parser.add_argument("--docs", required=True)
    args = parser.parse_args()

    self_test()
    scrape = subprocess.run([args.scrape_bin], capture_output=True, text=True)
    if scrape.returncode != 0:
        print(f"scrape failed ({scrape.returncode}): {scrape.stderr}", file=sys.stderr)
        return 2
    families = exported_families(scrape.stdout)
    service_families = {n for n in families if n.startswith(("attention_", "process_"))}
    if "attention_requests_total" not in families or len(service_families) < 20:
        print(f"the scrape holds too few families: {sorted(families)}", file=sys.stderr)
        return 2
    allowed = series_names(families)
    failures = []

    with open(args.dashboard) as f:
        dashboard = json.load(f)
    queries = dashboard_queries(dashboard)
    if not queries:
        failures.append("the dashboard has no queries")
    used = set()
    for where, expr in queries:
        names = metric_names(expr)
        if not names:
            failures.append(f"dashboard {where}: no metric in {expr!r}")
        used |= names
        for name in sorted(names - allowed):
            failures.append(f"dashboard {where}: {name} is not exported")
    for where, query in dashboard_variable_queries(dashboard):
        for name in sorted(templating_metric_names(query) - allowed):
            failures.append(f"dashboard {where}: {name} is not exported")
    # What the dashboard is for: latency percentiles, throughput, batch size, queue depth and
    # GPU memory.
    required = {
        "latency percentiles": lambda: any(
            "histogram_quantile" in e and "attention_request_duration_seconds_bucket" in e
            for _, e in queries),
        "throughput": lambda: "attention_requests_total" in used,
        "batch size": lambda: "attention_batch_size_requests_sum" in used and
        "attention_batch_size_tokens_sum" in used,
        "queue depth": lambda: "attention_queue_requests" in used,
        "GPU memory": lambda: "attention_device_memory_used_bytes" in used and
        "attention_device_memory_free_bytes" in used,
    }
    for what, present in required.items():
        if not present():
            failures.append(f"the dashboard shows no {what}")
    promtool = shutil.which("promtool")
    if promtool:
        failures += [f"dashboard PromQL: {e}" for e in promql_parse_errors(queries, promtool)]
    else:
        print("note: promtool not found, dashboard PromQL syntax not checked")

    with open(args.rules) as f:
        rules = rule_expressions(f.read())
    if not rules:
        failures.append("the rule file has no expressions")
    for where, expr in rules:
        names = metric_names(expr)
        if not names:
            failures.append(f"rules {where}: no metric in {expr!r}")
        for name in sorted(names - allowed):
            failures.append(f"rules {where}: {name} is not exported")

    with open(args.docs) as f:
        documented = documented_names(f.read())
    for name in sorted(service_families - documented):
        failures.append(f"docs: exported {name} is not in a table of {args.docs}")
    for name in sorted(documented - set(families)):
        failures.append(f"docs: documented {name} is not exported")

    for failure in failures:
        print("FAIL:", failure)
    print(f"{len(queries)} dashboard queries, {len(rules)} rule expressions, "
          f"{len(documented)} documented metrics checked against {len(families)} exported "
          f"families: {'FAILED' if failures else 'OK'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
