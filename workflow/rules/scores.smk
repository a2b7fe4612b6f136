# Scores: every prompt x scorer reduction from the caches, then tables, plots and report.
# No model is called here.

localrules: predictions, report, cache_summary, explorer, attribution, attribution_predictions

REPORT_OUTPUTS = (
    ["reports/predictions.parquet", "reports/scores.csv", "reports/scores.md",
     "reports/blog_comparison.md", "reports/rank_comparison.png", "reports/flips.csv",
     "reports/cache_summary.csv"]
    + [f"reports/matrix_{m}.png" for m in MODELS]
    + [f"reports/subjects_{m}.png" for m in MODELS]
    + [f"reports/attribution_{m}.{ext}" for m in MODELS for ext in ("csv", "png") if ATTR_PAIRS]
    + ["reports/explorer.html"]
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
        predictions="reports/predictions.parquet",
        blog=BLOG_CSV or [],
    output:
        scores_csv=report("reports/scores.csv", caption="../report/scores.rst", category="Scores"),
        scores_md="reports/scores.md",
        blog=report("reports/blog_comparison.md", caption="../report/blog.rst", category="Scores"),
        ranks=report("reports/rank_comparison.png", caption="../report/ranks.rst", category="Ranks"),
        flips=report("reports/flips.csv", caption="../report/flips.rst", category="Flips"),
        matrices=report(expand("reports/matrix_{m}.png", m=MODELS), caption="../report/matrix.rst", category="Prompt x scorer"),
        subjects=report(expand("reports/subjects_{m}.png", m=MODELS), caption="../report/subjects.rst", category="Subjects"),
    params:
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
        "{PY} report --predictions {input.predictions:q} --out-dir reports "
        "--blog-csv={input.blog:q} --hub-ids {params.hub_ids:q} "
        "--seed {params.seed} --samples {params.samples} --flavor-defs {params.flavor_defs:q} "
        "2> {log:q}"


rule cache_summary:
    input:
        cache_metrics(),
    output:
        report("reports/cache_summary.csv", caption="../report/cache_summary.rst",
               category="Cache"),
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        "logs/cache_summary.log",
    shell:
        "{PY} cache summary --out {output:q} --metrics {input:q} 2> {log:q}"


rule explorer:
    input:
        predictions="reports/predictions.parquet",
        questions="data/questions.parquet",
        prompts=expand("data/prompts/{f}.parquet", f=FLAVORS),
        cache=cache_shards(),
        choice_order=["reports/choice_order_questions.parquet"] if ROTATED else [],
        models=[model_dir(m) for m in MODELS if model_dir(m)],
    output:
        html=report("reports/explorer.html", caption="../report/explorer.rst", category="Explorer"),
        data=directory("reports/explorer"),
    params:
        flavor_defs=lambda wc: flavor_defs(),
        # tokenizers of the models, to show the text a chat template rendered
        models=lambda wc: json.dumps({MODELS[m]: {"entry": json.loads(entry_json(m)),
                                                  "model_dir": model_dir(m)} for m in MODELS},
                                     sort_keys=True),
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        "logs/explorer.log",
    shell:
        "{PY} explorer --predictions {input.predictions:q} --questions {input.questions:q} "
        "--prompts {input.prompts:q} --cache {input.cache:q} --out {output.html:q} "
        "--data-dir {output.data:q} --flavor-defs {params.flavor_defs:q} "
        "--models {params.models:q} "
        + ("--choice-order {input.choice_order:q} " if ROTATED else "") + "2> {log:q}"


if VARIANTS:

    rule attribution_predictions:
        input:
            cache_shards(list(VARIANTS)),
        output:
            "reports/attribution_variants.parquet",
        params:
            flavor_defs=lambda wc: flavor_defs(list(VARIANTS)),
        conda:
            ENV
        resources:
            mem_mb=8000,
            runtime=30,
        log:
            "logs/attribution_predictions.log",
        shell:
            "{PY} predictions --flavor-defs {params.flavor_defs:q} --out {output:q} {input:q} "
            "2> {log:q}"


if ATTR_PAIRS:

    rule attribution:
        input:
            ["reports/predictions.parquet"]
            + (["reports/attribution_variants.parquet"] if VARIANTS else []),
        output:
            csv=report(expand("reports/attribution_{m}.csv", m=MODELS), caption="../report/attribution.rst", category="Attribution"),
            png=report(expand("reports/attribution_{m}.png", m=MODELS), caption="../report/attribution.rst", category="Attribution"),
        params:
            pairs=json.dumps([p[:2] for p in ATTR_PAIRS]),
            order=",".join(ATTR_ORDER),
            seed=config.get("bootstrap_seed", 0),
            samples=config.get("bootstrap_samples", 1000),
            flavor_defs=lambda wc: flavor_defs(ALL_FLAVORS),
        conda:
            ENV
        resources:
            mem_mb=4000,
            runtime=30,
        log:
            "logs/attribution.log",
        shell:
            "{PY} attribution --predictions {input:q} --out-dir reports --pairs {params.pairs:q} "
            "--order {params.order:q} --seed {params.seed} --samples {params.samples} "
            "--flavor-defs {params.flavor_defs:q} 2> {log:q}"
