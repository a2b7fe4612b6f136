# Scores: every prompt x scorer reduction from the caches, then tables, plots and report.
# No model is called here.

localrules: predictions, report

REPORT_OUTPUTS = (
    ["reports/predictions.parquet", "reports/scores.csv", "reports/scores.md",
     "reports/blog_comparison.md", "reports/rank_comparison.png", "reports/flips.csv"]
    + [f"reports/matrix_{m}.png" for m in MODELS]
    + [f"reports/subjects_{m}.png" for m in MODELS]
)


rule predictions:
    input:
        cache_shards(),
    output:
        "reports/predictions.parquet",
    params:
        flavor_defs=lambda wc: flavor_defs(),
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        "logs/predictions.log",
    shell:
        "{PY} predictions --flavor-defs {params.flavor_defs:q} --out {output:q} {input:q} "
        "2> {log:q}"


rule report:
    input:
        "reports/predictions.parquet",
    output:
        scores_csv=report("reports/scores.csv", caption="../report/scores.rst", category="Scores"),
        scores_md="reports/scores.md",
        blog=report("reports/blog_comparison.md", caption="../report/blog.rst", category="Scores"),
        ranks=report("reports/rank_comparison.png", caption="../report/ranks.rst", category="Ranks"),
        flips=report("reports/flips.csv", caption="../report/flips.rst", category="Flips"),
        matrices=report(expand("reports/matrix_{m}.png", m=MODELS), caption="../report/matrix.rst", category="Prompt x scorer"),
        subjects=report(expand("reports/subjects_{m}.png", m=MODELS), caption="../report/subjects.rst", category="Subjects"),
    params:
        blog_csv=config.get("blog_csv") or "",
        hub_ids=json.dumps({n: REGISTRY[n].get("hub_id", "") for n in config["models"]}),
        seed=config.get("bootstrap_seed", 0),
        samples=config.get("bootstrap_samples", 1000),
        flavor_defs=lambda wc: flavor_defs(),
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        "logs/report.log",
    shell:
        "{PY} report --predictions {input:q} --out-dir reports "
        "--blog-csv={params.blog_csv:q} --hub-ids {params.hub_ids:q} "
        "--seed {params.seed} --samples {params.samples} --flavor-defs {params.flavor_defs:q} "
        "2> {log:q}"
