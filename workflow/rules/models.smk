# Models: a GGUF entry is dequantized once into a safetensors directory that later jobs load.


rule convert_gguf:
    output:
        directory("data/models/{model}"),
    params:
        # only the fields that pick the GGUF file: editing dtype or a resource hint of the
        # entry must not reconvert it (the converted weights are always float32)
        entry=lambda wc: json.dumps({k: v for k, v in entry(wc.model).items()
                                     if k in ("source", "gguf_package", "gguf_file", "gguf_path")},
                                    sort_keys=True),
    conda:
        ENV
    log:
        "logs/convert/{model}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{PY} convert --entry {params.entry:q} --out {output:q} 2> {log:q}"
