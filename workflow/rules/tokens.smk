# Tokenization: one CPU job per model x flavor x shard writes the token ids of every selected
# question (context, continuations, after the flavor's too-long policy) to
# data/tokens/{model}/{flavor}/{selection}/{shard}.parquet; the logits job reads them and
# starts its first forward without tokenizing. Tokenizer only (no weights); on SLURM it runs
# on MMLU_SLURM_CPU_PARTITION (else MMLU_SLURM_PARTITION).


rule tokens:
    input:
        prompts="data/prompts/{flavor}.parquet",
        model=lambda wc: model_dir(wc.model) or [],
    output:
        "data/tokens/{model}/{flavor}/{selection}/{shard}.parquet",
    params:
        entry=lambda wc: entry_json(wc.model),
        name=lambda wc: MODELS[wc.model],
        subjects=lambda wc: ",".join(SHARDS[wc.shard]),
        n=N_PER_SUBJECT or 0,
        model_dir=lambda wc: model_dir(wc.model) or "",
        flavor_defs=lambda wc: flavor_defs([wc.flavor]),
    wildcard_constraints:
        flavor="|".join(ALL_FLAVORS),
        selection=r"all|first\d+",
        shard=r"part\d+",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        slurm_partition=os.environ.get("MMLU_SLURM_CPU_PARTITION")
        or os.environ.get("MMLU_SLURM_PARTITION", ""),
        slurm_account=os.environ.get("MMLU_SLURM_ACCOUNT", ""),
    conda:
        ENV
    log:
        "logs/tokens/{model}/{flavor}/{selection}/{shard}.log",
    shell:
        "TOKENIZERS_PARALLELISM=true RAYON_NUM_THREADS={threads} {PY} tokens "
        "--prompts {input.prompts:q} --flavor {wildcards.flavor:q} "
        "--model-name {params.name:q} --entry {params.entry:q} "
        "--model-dir={params.model_dir:q} --subjects {params.subjects:q} "
        "--questions-per-subject {params.n} --flavor-defs {params.flavor_defs:q} "
        "--out {output:q} 2> {log:q}"
