"""Active health: probes, the canary and its shared store, chain presets, node versions."""
