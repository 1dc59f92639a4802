"""The API client: the pod's service account inside a cluster, else a kubeconfig file."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes.aio import config
from kubernetes.aio.client import ApiClient, Configuration


async def connect(kubeconfig: Path | None = None) -> ApiClient:
    """An ApiClient for the cluster; the caller closes it (``await client.close()``).

    In a pod (``KUBERNETES_SERVICE_HOST`` set) and without ``kubeconfig``, the service
    account's token and CA; otherwise ``kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``.
    """
    configuration = Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        await config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path) if path else None, client_configuration=configuration
        )
    return ApiClient(configuration)
