# Logits cache: one job per model x flavor x shard of subjects; one forward pass per prompt.


rule logits:
    input:
        prompts="data/prompts/{flavor}.parquet",
        model=lambda wc: model_dir(wc.model) or [],
    output:
        "data/cache/{model}/{flavor}/{selection}/{shard}.parquet",
    params:
        entry=lambda wc: entry_json(wc.model),
        name=lambda wc: MODELS[wc.model],
        subjects=lambda wc: ",".join(SHARDS[wc.shard]),
        n=N_PER_SUBJECT or 0,
        model_dir=lambda wc: model_dir(wc.model) or "",
        flavor_defs=lambda wc: flavor_defs([wc.flavor]),
    wildcard_constraints:
        flavor="|".join(FLAVORS),
        selection=r"all|first\d+",
        shard=r"part\d+",
    threads: config.get("threads_per_model_job", 2)
    resources:
        # derived from the model entry (mmlu_flavors/resources.py); gpu is None (unset: no
        # --gpus at all) for device: cpu; constraint None = no -C
        mem_mb=lambda wc: model_resources(wc.model, wc.flavor, wc.shard)["mem_mb"],
        runtime=lambda wc: model_resources(wc.model, wc.flavor, wc.shard)["runtime"],
        gpu=lambda wc: model_resources(wc.model, wc.flavor, wc.shard).get("gpu"),
        slurm_partition=lambda wc: model_resources(wc.model, wc.flavor, wc.shard)["slurm_partition"],
        slurm_account=lambda wc: model_resources(wc.model, wc.flavor, wc.shard)["slurm_account"],
        constraint=lambda wc: model_resources(wc.model, wc.flavor, wc.shard).get("constraint"),
    conda:
        ENV
    log:
        "logs/logits/{model}/{flavor}/{selection}/{shard}.log",
    shell:
        "OMP_NUM_THREADS={threads} {PY} logits --prompts {input.prompts:q} "
        "--flavor {wildcards.flavor:q} --model-name {params.name:q} --entry {params.entry:q} "
        "--model-dir={params.model_dir:q} --subjects {params.subjects:q} "
        "--questions-per-subject {params.n} --flavor-defs {params.flavor_defs:q} "
        "--out {output:q} 2> {log:q}"
