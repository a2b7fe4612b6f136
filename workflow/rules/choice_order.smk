# Choice order (issue 20): with `choice_permutations: cyclic` every selected flavor also runs
# under the three other cyclic rotations of its choices (flavors <flavor>_rot1.._rot3, each a
# logits job like any flavor); this rule reduces the four rotations of each model x
# implementation (mmlu_flavors.choice_order). Nothing runs by default.

CHOICE_OUTPUTS = (["reports/choice_order.csv", "reports/choice_order_ranks.csv",
                   "reports/choice_order_questions.parquet", "reports/choice_order.png"]
                  if ROTATED else [])

if ROTATED:

    localrules: choice_order

    rule choice_order:
        input:
            cache_shards(FLAVORS + list(ROTATED)),
        output:
            csv=report("reports/choice_order.csv", caption="../report/choice_order.rst",
                       category="Choice order"),
            ranks=report("reports/choice_order_ranks.csv", caption="../report/choice_order.rst",
                         category="Choice order"),
            questions="reports/choice_order_questions.parquet",
            png=report("reports/choice_order.png", caption="../report/choice_order.rst",
                       category="Choice order"),
        params:
            flavors=",".join(FLAVORS),
            seed=config.get("bootstrap_seed", 0),
            samples=config.get("bootstrap_samples", 1000),
            flavor_defs=lambda wc: flavor_defs(FLAVORS + list(ROTATED)),
        conda:
            ENV
        resources:
            mem_mb=4000,
            runtime=30,
        log:
            "logs/choice_order.log",
        shell:
            "{PY} choice-order --flavors {params.flavors:q} --out-dir reports "
            "--seed {params.seed} --samples {params.samples} "
            "--flavor-defs {params.flavor_defs:q} {input:q} 2> {log:q}"
