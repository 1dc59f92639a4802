"""What a new manifest changes in a running fleet: which variants are new, gone, changed or kept.

A variant is *kept* when everything its processes were started from is the same: the model's
source, the variant's recipe (its hash) and upstream, and the model's ``serve`` and
``kubernetes`` settings. A kept variant keeps its vLLM processes and warm state; a *changed* one
is a new variant under the same name (built on demand as usual) and its old processes drain and
stop; a *removed* one stops taking requests, drains and stops. Routing, ``on_missing``, keys and
limits are read per request, so they apply to the next one without touching any process.
Settings the fleet is built around (``cache_dir``, ``swapping``) need a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from serving.manifest import Manifest, Model, Variant

Key = tuple[str, str]  # (model, variant)


@dataclass(frozen=True)
class ManifestChange:
    added: list[Key] = field(default_factory=list)
    removed: list[Key] = field(default_factory=list)
    changed: list[Key] = field(default_factory=list)
    kept: list[Key] = field(default_factory=list)

    def summary(self) -> str:
        def names(keys: list[Key]) -> str:
            return ", ".join(f"{m}:{v}" for m, v in keys) or "none"

        return (
            f"added {names(self.added)}; removed {names(self.removed)}; changed "
            f"{names(self.changed)}; {len(self.kept)} kept"
        )

    def as_dict(self) -> dict[str, list[str]]:
        return {
            what: [f"{m}:{v}" for m, v in keys]
            for what, keys in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
                ("kept", self.kept),
            )
        }


def restart_needed(old: Manifest, new: Manifest) -> str | None:
    """Why the new manifest cannot be applied to a running fleet, or None."""
    if old.cache_dir != new.cache_dir:
        return f"cache_dir changed ({old.cache_dir} -> {new.cache_dir}): restart the gateway"
    if old.swapping != new.swapping:
        return "the swapping block changed: restart the gateway"
    return None


def compare(old: Manifest, new: Manifest) -> ManifestChange:
    before, after = _identities(old), _identities(new)
    change = ManifestChange()
    for key, identity in after.items():
        if key not in before:
            change.added.append(key)
        elif before[key] != identity:
            change.changed.append(key)
        else:
            change.kept.append(key)
    change.removed.extend(key for key in before if key not in after)
    return change


def _identities(manifest: Manifest) -> dict[Key, str]:
    return {
        (m, v): _identity(model, variant)
        for m, model in manifest.models.items()
        for v, variant in model.variants.items()
    }


def _identity(model: Model, variant: Variant) -> str:
    """Everything a variant's processes were started from."""
    return json.dumps(
        {
            "source": model.source,
            "recipe": variant.recipe_hash(),
            "upstream": variant.upstream.model_dump() if variant.upstream else None,
            "serve": model.serve.model_dump(mode="json"),
            "kubernetes": model.kubernetes.model_dump(mode="json"),
        },
        sort_keys=True,
    )
