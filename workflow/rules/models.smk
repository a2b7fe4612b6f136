# Models: a GGUF entry is dequantized once into a safetensors directory that later jobs load.


rule convert_gguf:
    output:
        directory("data/models/{model}"),
    params:
        entry=lambda wc: entry_json(wc.model),
    conda:
        ENV
    log:
        "logs/convert/{model}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{PY} convert --entry {params.entry:q} --out {output:q} 2> {log:q}"
