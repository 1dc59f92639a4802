"""Quantgate on Kubernetes: a Deployment and a Service per variant, a Job per quantization.

settings = KubernetesSettings()                       # QUANTGATE_NAMESPACE, ..._IMAGE, ...
launcher = KubernetesLauncher(await connect(), settings)
server = launcher.server(VariantWorkload.of(name, model, variant, folder, volume, quant))
await server.start(timeout_s)                         # like VllmServer: url, alive(), stop()
result = await launcher.run_quantization_job(QuantizationWorkload.of(...))

Static mode (the Helm chart runs vLLM; the gateway finds its backends and changes nothing):
``serving.kube.static``.
"""

from serving.kube.client import connect
from serving.kube.launcher import JobOverdue, KubernetesLauncher, VllmDeployment
from serving.kube.settings import KubernetesSettings
from serving.kube.volume import MOUNT_PATH, CacheVolume
from serving.kube.workload import QuantizationWorkload, VariantWorkload, quantization_spec

__all__ = [
    "MOUNT_PATH",
    "CacheVolume",
    "JobOverdue",
    "KubernetesLauncher",
    "KubernetesSettings",
    "QuantizationWorkload",
    "VariantWorkload",
    "VllmDeployment",
    "connect",
    "quantization_spec",
]
