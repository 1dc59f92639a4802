"""Quantgate on Kubernetes: a Deployment and a Service per variant, a Job per quantization."""
