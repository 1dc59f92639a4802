"""Names and labels of the objects Quantgate owns in a cluster.

Model and variant names may hold ``.`` and ``_`` and run to 63 characters, so object names
are sanitized to DNS-1123 labels (also valid DNS-1035 labels, as Services need) and always end
in a short hash of the exact names: ``tiny.v2``/``a`` and ``tiny-v2``/``a`` must not collide,
nor ``a-b``/``c`` and ``a``/``b-c``. Selectors use the unique instance label, never the
sanitized model and variant labels; the exact names are kept in annotations.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
PREFIX = "qg"

MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
MODEL = "quantgate.io/model"
VARIANT = "quantgate.io/variant"
RECIPE_HASH = "quantgate.io/recipe-hash"
JOB_ID = "quantgate.io/job-id"

VLLM_APP = "quantgate-vllm"
QUANTIZER_APP = "quantgate-quantizer"


def short_hash(*parts: str, length: int = 6) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def dns_label(*parts: str) -> str:
    """``qg-<parts>-<hash>``: lowercase alphanumerics and '-', at most 63 characters."""
    suffix = "-" + short_hash(*parts)
    body = "-".join(re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in parts)
    body = re.sub(r"-+", "-", f"{PREFIX}-{body}")[: MAX_NAME - len(suffix)].rstrip("-")
    return body + suffix


def label_value(value: str) -> str:
    """A label value shown for people (model, variant): invalid characters become '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:MAX_NAME]
    return cleaned.strip("._-")


def variant_name(model: str, variant: str) -> str:
    """The Deployment's and the Service's name for a variant."""
    return dns_label(model, variant)


def job_name(job_id: str) -> str:
    return dns_label("quantize", job_id)


def variant_labels(model: str, variant: str, recipe_hash: str) -> dict[str, str]:
    return {
        **selector(model, variant),
        MANAGED_BY: "quantgate",
        COMPONENT: "server",
        MODEL: label_value(model),
        VARIANT: label_value(variant),
        RECIPE_HASH: recipe_hash,
    }


def selector(model: str, variant: str) -> dict[str, str]:
    """The labels that pick a variant's pods: stable for the Deployment's lifetime."""
    return {APP_NAME: VLLM_APP, INSTANCE: variant_name(model, variant)}


def job_labels(model: str, variant: str, recipe_hash: str, job_id: str) -> dict[str, str]:
    return {
        MANAGED_BY: "quantgate",
        APP_NAME: QUANTIZER_APP,
        INSTANCE: job_name(job_id),
        COMPONENT: "quantizer",
        MODEL: label_value(model),
        VARIANT: label_value(variant),
        RECIPE_HASH: recipe_hash,
        JOB_ID: label_value(job_id),
    }


def exact_names(model: str, variant: str) -> dict[str, str]:
    return {MODEL: model, VARIANT: variant}
