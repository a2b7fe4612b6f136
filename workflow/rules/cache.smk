# Logits cache: one job per model x flavor x shard of subjects. The job computes only the
# questions the store (data/cache/store, keyed by model fingerprint and exact model input)
# does not hold, then writes the shard's view. Params carry only what can change a cached
# number; batch size, token budget and checkpointing travel as resources, so editing them
# never reruns a job.


rule logits:
    input:
        prompts="data/prompts/{flavor}.parquet",
        tokens="data/tokens/{model}/{flavor}/{selection}/{shard}.parquet",
        model=lambda wc: model_dir(wc.model) or [],
    output:
        view="data/cache/{model}/{flavor}/{selection}/{shard}.parquet",
        metrics="data/cache/{model}/{flavor}/{selection}/{shard}.metrics.json",
    params:
        entry=lambda wc: entry_json(wc.model),
        name=lambda wc: MODELS[wc.model],
        subjects=lambda wc: ",".join(SHARDS[wc.shard]),
        n=N_PER_SUBJECT or 0,
        model_dir=lambda wc: model_dir(wc.model) or "",
        store=CACHE_STORE,
        flavor_defs=lambda wc: flavor_defs([wc.flavor]),
        without_template=config.get("chat_without_template", "stop"),
    wildcard_constraints:
        flavor="|".join(ALL_FLAVORS),
        selection=r"all|first\d+",
        shard=r"part\d+",
    threads: config.get("threads_per_model_job", 2)
    resources:
        # derived from the model entry (mmlu_flavors/resources.py); gpu is None (unset: no
        # --gpus at all) for device: cpu or a job with nothing to compute; constraint None = no -C
        # mem_mb and runtime grow with each retry (attempt) and follow the metrics of this
        # model's finished jobs (learned resources, docs/cluster.md)
        mem_mb=lambda wc, attempt: model_resources(wc.model, wc.flavor, wc.shard, attempt)["mem_mb"],
        runtime=lambda wc, attempt: model_resources(wc.model, wc.flavor, wc.shard, attempt)["runtime"],
        gpu=lambda wc: model_resources(wc.model, wc.flavor, wc.shard).get("gpu"),
        slurm_partition=lambda wc: model_resources(wc.model, wc.flavor, wc.shard)["slurm_partition"],
        slurm_account=lambda wc: model_resources(wc.model, wc.flavor, wc.shard)["slurm_account"],
        constraint=lambda wc: model_resources(wc.model, wc.flavor, wc.shard).get("constraint"),
        # runtime hints of the engine (never part of a cache key)
        batch_size=lambda wc: int(entry(wc.model).get("batch_size", 8)),
        max_batch_tokens=lambda wc: int(entry(wc.model).get("max_batch_tokens", 0)),
        checkpoint_questions=int(config.get("checkpoint_questions", 256)),
        checkpoint_seconds=int(config.get("checkpoint_seconds", 300)),
    conda:
        ENV
    log:
        "logs/logits/{model}/{flavor}/{selection}/{shard}.log",
    shell:
        # exec: python replaces the rule's bash, so the signals SLURM sends at a time limit,
        # scancel or preemption (SIGTERM, then SIGKILL after KillWait) reach the process that
        # flushes, and no orphan outlives the job (ci/slurm/README.md, "Signals")
        "exec env OMP_NUM_THREADS={threads} {PY} logits --prompts {input.prompts:q} "
        "--flavor {wildcards.flavor:q} --model-name {params.name:q} --entry {params.entry:q} "
        "--model-dir={params.model_dir:q} --subjects {params.subjects:q} "
        "--tokens {input.tokens:q} "
        "--questions-per-subject {params.n} --store {params.store:q} "
        "--batch-size {resources.batch_size} --max-batch-tokens {resources.max_batch_tokens} "
        "--checkpoint-questions {resources.checkpoint_questions} "
        "--checkpoint-seconds {resources.checkpoint_seconds} "
        "--without-template {params.without_template} "
        "--flavor-defs {params.flavor_defs:q} --out {output.view:q} --metrics {output.metrics:q} 2> {log:q}"
