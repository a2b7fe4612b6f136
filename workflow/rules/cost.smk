# Cost after a run: the GPU-hours the logits jobs used, per model and device, from the
# metrics file each job writes beside its view (mmlu_flavors.plan.used_gpu_hours).
# Before a run: `mmlu-flavors plan --configfile blog.yaml` (docs/cluster.md).

localrules: cost


rule cost:
    input:
        cache_metrics(),
    output:
        report("reports/cost.csv", caption="../report/cost.rst", category="Cost"),
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        "logs/cost.log",
    shell:
        "{PY} plan --out {output:q} --used {input:q} > {log:q} 2>&1"
