"""Programs run as their own processes in the quantizer environment (torch, transformers).

They import only the standard library, torch & co, and each other: never pydantic models or
anything else from ``serving``, so they run wherever ``serving/worker`` is on the path.
"""
