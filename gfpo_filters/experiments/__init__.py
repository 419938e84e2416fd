"""Experiments around the core: the demo, the toy task family, the addition task, the GGUF model loader and the
SmolLM2 training harness. Nothing in the core (registry, filters, step, adapters) imports this subpackage."""
