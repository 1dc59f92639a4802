"""Quantgate serving: manifests, variants, quantization jobs and vLLM processes.

Never imports ``gateway``. Modules under ``serving.worker`` run inside the quantizer's own
environment (torch, llm-compressor) and import nothing else from this package.
"""
