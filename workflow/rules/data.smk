# Data stage: MMLU questions, then one prompt table per flavor (all 57 subjects).


rule questions:
    output:
        table="data/questions.parquet",
        info="data/questions.json",
    params:
        source=config.get("mmlu_source", "auto"),
        mmlu=config.get("mmlu_dir") or "",
        hub=config.get("hub_dataset", "cais/mmlu"),
        revision=config.get("hub_revision") or "",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        "logs/questions.log",
    shell:
        "{PY} questions --source {params.source:q} --mmlu={params.mmlu:q} "
        "--hub {params.hub:q} --revision={params.revision:q} --out {output.table:q} 2> {log:q}"


rule prompts:
    input:
        "data/questions.parquet",
    output:
        "data/prompts/{flavor}.parquet",
    params:
        num_fewshot=config.get("num_fewshot", 5),
        flavor_defs=lambda wc: flavor_defs([wc.flavor]),
    wildcard_constraints:
        flavor="|".join(FLAVORS),
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        "logs/prompts/{flavor}.log",
    shell:
        "{PY} prompts --questions {input:q} --flavor {wildcards.flavor:q} "
        "--num-fewshot {params.num_fewshot} --flavor-defs {params.flavor_defs:q} "
        "--out {output:q} 2> {log:q}"
