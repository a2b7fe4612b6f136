# mmlu-flavors: how much an MMLU score depends on who computed it.
# Rules are split by stage in workflow/rules/; the work is done by the mmlu_flavors package.

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))  # the mmlu_flavors package

min_version("9.0")

configfile: "config.yaml"

validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/tokens.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/cost.smk"
include: "workflow/rules/choice_order.smk"


rule all:
    input:
        REPORT_OUTPUTS,
        "reports/cost.csv",
        CHOICE_OUTPUTS,
    default_target: True
